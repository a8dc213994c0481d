/// An immutable-after-build hash table from (parent, byte string) to an Int32, for the rule
/// lookup's hot path: keys live in one byte arena, slots in one array, and a lookup hashes
/// the caller's bytes in place, so it never allocates and never goes through `String` hashing.
///
/// Keys come from the operator's rules, so the table's own contents cannot be chosen by a peer;
/// a peer's lookup key only selects which probe sequence is walked.
struct ByteKeyTable: Sendable {
    private struct Slot: Sendable {
        var hash: UInt64 = 0
        var start: UInt32 = 0
        var length: UInt32 = 0
        var parent: Int32 = 0
        var value: Int32 = -1  // -1 marks an empty slot
    }

    private var slots: [Slot]
    private var arena: [UInt8] = []
    private(set) var count = 0

    init(capacity: Int = 8) {
        var size = 8
        while size < capacity * 2 { size <<= 1 }
        slots = Array(repeating: Slot(), count: size)
    }

    /// The value stored under (`parent`, `key`), or -1.
    func find(parent: Int32, key: UnsafeBufferPointer<UInt8>) -> Int32 {
        let hash = Self.hash(parent: parent, key: key)
        let mask = slots.count - 1
        var index = Int(truncatingIfNeeded: hash) & mask
        return slots.withUnsafeBufferPointer { slots in
            arena.withUnsafeBufferPointer { arena in
                while true {
                    let slot = slots[index]
                    if slot.value < 0 { return -1 }
                    if slot.hash == hash, slot.parent == parent, Int(slot.length) == key.count,
                        Self.equal(
                            UnsafeRawBufferPointer(start: arena.baseAddress! + Int(slot.start), count: key.count),
                            UnsafeRawBufferPointer(key))
                    {
                        return slot.value
                    }
                    index = (index + 1) & mask
                }
            }
        }
    }

    /// Stores `value` under (`parent`, `key`) unless a value is there; returns the stored value.
    mutating func insert(parent: Int32, key: UnsafeBufferPointer<UInt8>, value: Int32) -> Int32 {
        let existing = find(parent: parent, key: key)
        if existing >= 0 { return existing }
        if (count + 1) * 2 > slots.count { grow() }
        let slot = Slot(
            hash: Self.hash(parent: parent, key: key), start: UInt32(arena.count), length: UInt32(key.count),
            parent: parent, value: value)
        arena.append(contentsOf: key)
        place(slot)
        count += 1
        return value
    }

    mutating func insert(parent: Int32, key: Substring, value: Int32) -> Int32 {
        var key = key
        return key.withUTF8 { insert(parent: parent, key: $0, value: value) }
    }

    private mutating func place(_ slot: Slot) {
        let mask = slots.count - 1
        var index = Int(truncatingIfNeeded: slot.hash) & mask
        while slots[index].value >= 0 { index = (index + 1) & mask }
        slots[index] = slot
    }

    private mutating func grow() {
        let old = slots
        slots = Array(repeating: Slot(), count: old.count * 2)
        for slot in old where slot.value >= 0 { place(slot) }
    }

    private static func equal(_ lhs: UnsafeRawBufferPointer, _ rhs: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset + 8 <= lhs.count {
            if lhs.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                != rhs.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            {
                return false
            }
            offset += 8
        }
        while offset < lhs.count {
            if lhs[offset] != rhs[offset] { return false }
            offset += 1
        }
        return true
    }

    /// Eight bytes at a time with a multiply-xorshift mix; folds in the parent.
    static func hash(parent: Int32, key: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var hash: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(UInt32(bitPattern: parent)) ^ UInt64(key.count) << 32
        let raw = UnsafeRawBufferPointer(key)
        var offset = 0
        while offset + 8 <= raw.count {
            hash = (hash ^ raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
            hash ^= hash >> 29
            offset += 8
        }
        var tail: UInt64 = 0
        if offset < raw.count, raw.count >= 8 {
            // The last eight bytes, overlapping ones already mixed: one load instead of a byte loop.
            tail = raw.loadUnaligned(fromByteOffset: raw.count - 8, as: UInt64.self)
        } else {
            var shift: UInt64 = 0
            while offset < raw.count {
                tail |= UInt64(raw[offset]) << shift
                shift += 8
                offset += 1
            }
        }
        hash = (hash ^ tail) &* 0xC4CE_B9FE_1A85_EC53
        return hash ^ hash >> 32
    }
}
