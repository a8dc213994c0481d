import Testing
import WardIO

@Suite struct ProxyHeaderTests {
    @Test func ipv4HeaderCarriesAddressesTLSAndTheSPIFFEID() throws {
        let header = ProxyHeader(
            source: .ipv4([127, 0, 0, 2], port: 40000), destination: .ipv4([127, 0, 0, 1], port: 8443),
            tlsVersion: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256", spiffeID: "spiffe://example.org/ns/prod/sa/web")
        let bytes = try #require(header.encoded())
        #expect(Array(bytes[0..<12]) == ProxyHeader.signature)
        #expect(bytes[12] == 0x21)
        #expect(bytes[13] == 0x11)
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        #expect(bytes.count == 16 + length)
        #expect(Array(bytes[16..<28]) == [127, 0, 0, 2, 127, 0, 0, 1, 0x9C, 0x40, 0x20, 0xFB])
        // TLVs: SSL first, with the client flags, verify 0 and the two sub-TLVs.
        var offset = 28
        #expect(bytes[offset] == 0x20)
        let sslLength = Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
        #expect(Array(bytes[(offset + 3)..<(offset + 8)]) == [0x03, 0, 0, 0, 0])
        let version = bytes[(offset + 8)...]
        #expect(version.first == 0x21)
        #expect(String(decoding: version.dropFirst(3).prefix(7), as: UTF8.self) == "TLSv1.3")
        offset += 3 + sslLength
        #expect(bytes[offset] == 0xE0)
        let idLength = Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
        #expect(
            String(decoding: bytes[(offset + 3)..<(offset + 3 + idLength)], as: UTF8.self)
                == "spiffe://example.org/ns/prod/sa/web")
        #expect(offset + 3 + idLength == bytes.count)
    }

    @Test func ipv6HeaderUsesFamily0x21() throws {
        let loopback = [UInt8](repeating: 0, count: 15) + [1]
        let header = ProxyHeader(
            source: .ipv6(loopback, port: 1), destination: .ipv6(loopback, port: 2), tlsVersion: nil, cipher: nil,
            spiffeID: nil)
        let bytes = try #require(header.encoded())
        #expect(bytes[13] == 0x21)
        // 36 bytes of addresses, then the SSL TLV (3 + 5 bytes) alone.
        #expect(Int(bytes[14]) << 8 | Int(bytes[15]) == 36 + 8)
    }

    @Test func mixedFamiliesHaveNoHeader() {
        let header = ProxyHeader(
            source: .ipv4([127, 0, 0, 1], port: 1), destination: .ipv6([UInt8](repeating: 0, count: 16), port: 2),
            tlsVersion: nil, cipher: nil, spiffeID: nil)
        #expect(header.encoded() == nil)
    }
}
