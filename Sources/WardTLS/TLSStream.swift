internal import COpenSSL
internal import CWardShims
import Glibc
import WardIO
import WardIdentity
import WardSystem

/// Told how a TLS handshake ended; runs on the stream's loop.
public protocol TLSHandshakeDelegate: AnyObject {
    func handshakeCompleted(_ stream: TLSStream)
    /// The peer was refused or the handshake broke; Ward's alert, if any, is already sent.
    func handshakeFailed(_ stream: TLSStream, reason: ReasonCode, detail: String?)
}

/// A TLS session on a non-blocking socket, driven by the socket's libevent events.
///
/// It owns its `SSL` for its whole life; nothing outside WardTLS sees it. Reads go straight
/// from the socket into OpenSSL with read-ahead, so one `recv` brings as many records as the
/// socket holds (up to `readBufferSize`). Records OpenSSL writes are gathered in the loop's
/// staging buffer and leave in one `send` per operation: a 64 KiB write is four full records
/// and one system call. What the socket does not take waits in the stream's queue.
public final class TLSStream: EventedSocket, ByteStream {
    public enum Role: Sendable {
        case server
        case client
    }

    /// How much one `recv` may bring with read-ahead.
    public static let readBufferSize = 64 * 1024

    let ssl: OpaquePointer
    /// Kept alive while the session is: its verify callback points into it.
    private let context: TLSContext
    public let check: PeerCheck
    private let staging: StagingBuffer
    public weak var delegate: (any ByteStreamDelegate)?
    public weak var handshakeDelegate: (any TLSHandshakeDelegate)?
    public private(set) var isHandshaking = false
    private var finishRequested = false
    /// Post-handshake handshake messages from the peer in the current window.
    private var lateMessages = 0
    private var lateWindowStart: Int64 = 0
    private var writeShut = false
    private var streamFailure: String?

    public var failure: String? { streamFailure ?? (sendError == 0 ? nil : errnoDescription(sendError)) }

    /// A stream for an accepted (`.server`) or connecting (`.client`) socket. Nil if OpenSSL
    /// cannot allocate; `fd` is then still the caller's.
    public init?(
        context: TLSContext, fd: Int32, base: OpaquePointer, check: PeerCheck, staging: StagingBuffer,
        role: Role = .server
    ) {
        guard let ssl = SSL_new(context.context) else { return nil }
        guard let readBIO = BIO_new_socket(fd, BIO_NOCLOSE), let writeBIO = BIO_new(stagingBIOMethod) else {
            SSL_free(ssl)
            return nil
        }
        self.ssl = ssl
        self.context = context
        self.check = check
        self.staging = staging
        super.init(fd: fd, base: base)
        SSL_set_ex_data(ssl, peerCheckIndex, Unmanaged.passUnretained(check).toOpaque())
        BIO_set_data(writeBIO, Unmanaged.passUnretained(self).toOpaque())
        BIO_set_init(writeBIO, 1)
        SSL_set_bio(ssl, readBIO, writeBIO)
        SSL_set_read_ahead(ssl, 1)
        _ = SSL_ctrl(ssl, SSL_CTRL_SET_MSG_CALLBACK_ARG, 0, Unmanaged.passUnretained(self).toOpaque())
        if role == .server { SSL_set_accept_state(ssl) } else { SSL_set_connect_state(ssl) }
    }

    deinit {
        // The write BIO points back here; nothing may write through it any more.
        SSL_free(ssl)
    }

    // MARK: Handshake

    /// Client role, before `startHandshake`: the SNI to send, and the outbound entry whose kept
    /// sessions to resume with (and keep the new ones in).
    public func prepareClientHello(serverName: String?, entry: Int) {
        (context as? TLSClientContext)?.prepare(ssl, serverName: serverName, entry: entry)
    }

    /// Starts (client) or awaits (server) the handshake; the delegate hears how it ends.
    public func startHandshake() {
        isHandshaking = true
        watchReadable(true)
        advanceHandshake()
    }

    private func advanceHandshake() {
        ERR_clear_error()
        let result = SSL_do_handshake(ssl)
        let savedErrno = errno
        if result == 1 {
            isHandshaking = false
            // What the handshake's last flight wrote (a client's Finished, a server's ticket)
            // leaves after the delegate ran: with the first bytes it forwards, in one send.
            withExtendedLifetime(self) {
                handshakeDelegate?.handshakeCompleted(self)
                flushStaged()
                // Nothing reads this stream until a splice takes it (inbound: once the upstream
                // connects); an outbound splice started above and keeps it watched.
                if delegate == nil { watchReadable(false) }
            }
            return
        }
        let error = SSL_get_error(ssl, result)
        flushStaged()
        if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) && sendError == 0 { return }
        isHandshaking = false
        watchReadable(false)
        let (reason, detail) = handshakeFailure(error: error, savedErrno: savedErrno)
        handshakeDelegate?.handshakeFailed(self, reason: reason, detail: detail)
    }

    /// Names why a handshake failed: the SVID verdict if verification ran, else OpenSSL's reason.
    private func handshakeFailure(error: Int32, savedErrno: Int32) -> (ReasonCode, String?) {
        let errors = OpenSSLError.drainCodes()
        if let reason = check.reason { return (reason, check.detail) }
        let detail = errors.last.map(OpenSSLError.text(of:))
        // OpenSSL says "excessive message size" of any handshake message: name the certificate only.
        let state = SSL_get_state(ssl)
        let readingCertificate = state == TLS_ST_SR_CERT || state == TLS_ST_CR_CERT
        for code in errors {
            switch ERR_GET_REASON(code) {
            case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: return (.noClientCert, detail)
            case SSL_R_UNSUPPORTED_PROTOCOL: return (.protocolVersion, detail)
            case SSL_R_EXCESSIVE_MESSAGE_SIZE:
                return (readingCertificate ? .certTooLarge : .handshakeTooLarge, detail)
            default: continue
            }
        }
        if let detail { return (.tlsError, detail) }
        if sendError != 0 { return (.tlsError, errnoDescription(sendError)) }
        if error == SSL_ERROR_SYSCALL && savedErrno != 0 && savedErrno != EAGAIN {
            return (.tlsError, errnoDescription(savedErrno))
        }
        return (.tlsError, "connection closed during handshake")
    }

    // MARK: What the handshake established

    public var isResumed: Bool { SSL_session_reused(ssl) == 1 }
    /// Takes this connection's session out of the resumption cache: a peer the rules refused
    /// leaves nothing behind to resume (it would be decided again, but costs memory meanwhile).
    public func forgetSession() {
        guard let session = SSL_get_session(ssl) else { return }
        SSL_CTX_remove_session(SSL_get_SSL_CTX(ssl), session)
    }

    /// What verification established when this session was first made, if it was recorded.
    public var sessionRecord: SessionRecord? { SSL_get_session(ssl).flatMap(SessionRecord.attached(to:)) }
    public var protocolVersion: String? { CText.optional(SSL_get_version(ssl)) }
    public var cipher: String? {
        guard let current = SSL_get_current_cipher(ssl) else { return nil }
        return CText.optional(SSL_CIPHER_get_name(current))
    }

    /// SHA-256 over the DER of the certificates the peer presented, leaf first: peers with equal
    /// fingerprints verify alike against the same bundle at the same time.
    public var peerChainFingerprint: String? {
        guard let leaf = SSL_get0_peer_certificate(ssl) else { return nil }
        var parts = [Certificate(borrowing: leaf).der]
        if let chain = SSL_get_peer_cert_chain(ssl) {
            for index in 0..<OPENSSL_sk_num(chain) {
                guard let certificate = OPENSSL_sk_value(chain, index) else { continue }
                parts.append(Certificate(borrowing: OpaquePointer(certificate)).der)
            }
        }
        return Digest.sha256Hex(lengthPrefixed: parts)
    }

    // MARK: Reading and writing

    public override func readReady() {
        if isHandshaking {
            advanceHandshake()
        } else {
            delegate?.streamReadable(self)
        }
    }

    public override func writeReady() {
        let drained = sendQueued()
        if drained { finishIfRequested() }
        if drained || sendError != 0 { delegate?.streamDrained(self) }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) -> ReadResult {
        if let streamFailure { return .failed(streamFailure) }
        ERR_clear_error()
        var got = 0
        let result = SSL_read_ex(ssl, buffer.baseAddress, buffer.count, &got)
        let savedErrno = errno
        if result == 1 {
            if staging.count > 0 { flushStaged() }
            return .bytes(count: got, more: SSL_has_pending(ssl) == 1)
        }
        let error = SSL_get_error(ssl, result)
        // Reading may have queued an alert or a key-update answer.
        flushStaged()
        if let streamFailure {
            ERR_clear_error()
            return .failed(streamFailure)
        }
        switch error {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wouldBlock
        case SSL_ERROR_ZERO_RETURN:
            return .end
        case SSL_ERROR_SYSCALL:
            let text = OpenSSLError.drainQueue().last
            if let text { return fail(text) }
            return savedErrno == 0 ? .end : fail(errnoDescription(savedErrno))
        default:
            return fail(OpenSSLError.drainQueue().last ?? "TLS error")
        }
    }

    private func fail(_ text: String) -> ReadResult {
        streamFailure = text
        return .failed(text)
    }

    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard streamFailure == nil, sendError == 0, !isClosed else { return false }
        guard bytes.count > 0 else { return true }
        ERR_clear_error()
        var written = 0
        let result = SSL_write_ex(ssl, bytes.baseAddress, bytes.count, &written)
        flushStaged()
        guard result == 1 else {
            streamFailure = OpenSSLError.drainQueue().last ?? "TLS write failed"
            return false
        }
        return sendError == 0
    }

    public var queuedBytes: Int { output.count }

    public func pauseReading() { watchReadable(false) }

    public func resumeReading() {
        watchReadable(true)
        // Records already read ahead wait above the socket: the socket will not say so.
        if SSL_has_pending(ssl) == 1 { triggerRead() }
    }

    public func readAgainSoon() { triggerRead() }

    /// Sends close_notify once the queue has drained, then FIN.
    public func finishWriting() {
        finishRequested = true
        sendCloseNotify()
        if output.isEmpty { finishIfRequested() }
    }

    /// Queues close_notify (once) and sends it with anything queued before it.
    public func sendCloseNotify() {
        guard !isClosed, streamFailure == nil, SSL_is_init_finished(ssl) == 1 else { return }
        if SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN != 0 { return }
        ERR_clear_error()
        SSL_shutdown(ssl)
        ERR_clear_error()
        flushStaged()
    }

    private func finishIfRequested() {
        guard finishRequested, !writeShut, !isClosed else { return }
        writeShut = true
        shutdownWrite()
    }

    // MARK: Post-handshake messages

    /// A peer may send this many handshake messages after the handshake (KeyUpdate, session
    /// tickets) per `lateWindowMicroseconds`; one more fails the stream. Each costs a key
    /// derivation and maybe an answer, and a flood of them is no traffic worth carrying.
    public static let maxLateMessages = 64
    static let lateWindowMicroseconds: Int64 = 10_000_000

    fileprivate func receivedHandshakeMessage() {
        // Not SSL_is_init_finished: OpenSSL re-enters its handshake state for each such message.
        guard !isHandshaking, streamFailure == nil else { return }
        let now = monotonicMicroseconds()
        if now - lateWindowStart > Self.lateWindowMicroseconds {
            lateWindowStart = now
            lateMessages = 0
        }
        lateMessages += 1
        if lateMessages > Self.maxLateMessages {
            // Also fails any answer OpenSSL writes now (absorb), which ends the current call.
            streamFailure =
                "the peer sent more than \(Self.maxLateMessages) post-handshake messages (KeyUpdate, tickets) in 10 s"
        }
    }

    // MARK: The staging BIO

    /// Past this much queued output the peer is not reading what Ward sends it. Forwarding
    /// never queues more than one batch (`Splice`); only answers Ward owes a peer that keeps
    /// talking without reading (KeyUpdate, alerts to renegotiation attempts) get here.
    public static let maxQueuedOutput = 256 * 1024

    /// OpenSSL wrote `length` bytes of records: gather them for one send, keeping order with
    /// anything already queued. False when the peer has stopped reading for too long: the write
    /// fails, which ends the OpenSSL call (it would otherwise go on reading and answering).
    fileprivate func absorb(_ data: UnsafeRawPointer, _ length: Int) -> Bool {
        guard streamFailure == nil else { return false }
        let bytes = UnsafeRawBufferPointer(start: data, count: length)
        if !output.isEmpty || sendError != 0 {
            send(bytes)
            if output.count > Self.maxQueuedOutput {
                streamFailure = "the peer does not read what Ward sends (\(output.count) bytes queued)"
                output.release()
                return false
            }
            return true
        }
        if staging.count + length > staging.capacity {
            flushStaged()
            if !output.isEmpty || length > staging.capacity {
                send(bytes)
                return true
            }
        }
        memcpy(staging.base + staging.count, data, length)
        staging.count += length
        return true
    }

    /// Sends what OpenSSL wrote during the last call: the staging buffer is empty again after.
    private func flushStaged() {
        guard staging.count > 0 else { return }
        let count = staging.count
        staging.count = 0
        send(UnsafeRawBufferPointer(start: staging.base, count: count))
    }
}

/// A sink BIO that hands OpenSSL's output to its `TLSStream` (`absorb`), which gathers records
/// so several leave in one `send`. Built once, then only read (BIO_new): safe to share.
private nonisolated(unsafe) let stagingBIOMethod: OpaquePointer? = {
    guard let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ward-staging") else { return nil }
    BIO_meth_set_write_ex(method, stagingWrite)
    BIO_meth_set_ctrl(method, stagingControl)
    return method
}()

private let stagingWrite:
    @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, Int, UnsafeMutablePointer<Int>?) -> Int32 = {
        bio, data, length, written in
        guard let bio, let data, let pointer = BIO_get_data(bio) else { return 0 }
        let stream = Unmanaged<TLSStream>.fromOpaque(pointer).takeUnretainedValue()
        guard stream.absorb(UnsafeRawPointer(data), length) else { return 0 }
        written?.pointee = length
        return 1
    }

private let stagingControl: @convention(c) (OpaquePointer?, Int32, Int, UnsafeMutableRawPointer?) -> Int = {
    _, command, _, _ in
    // Flushing is the stream's job after every call; nothing else applies to a sink.
    command == BIO_CTRL_FLUSH ? 1 : 0
}

/// Every TLS record and message OpenSSL reads or writes passes here; only handshake messages
/// the peer sends are counted (`TLSStream.receivedHandshakeMessage`).
let tlsMessageCallback:
    @convention(c) (Int32, Int32, Int32, UnsafeRawPointer?, Int, OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
        written, _, contentType, _, _, _, argument in
        guard written == 0, contentType == SSL3_RT_HANDSHAKE, let argument else { return }
        Unmanaged<TLSStream>.fromOpaque(argument).takeUnretainedValue().receivedHandshakeMessage()
    }
