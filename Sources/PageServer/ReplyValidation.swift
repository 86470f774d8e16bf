/// Checks a page server's reply header against the `PS_IOV_GET` it answers, before a single byte of page data is
/// trusted. Returns the number of pages that follow (at least 1, at most what was asked).
///
/// A CRIU page server answers `PS_IOV_ADD_F | PE_PRESENT << 16` with the request's `vaddr` and `dst_id` and
/// `nr_pages` clamped to the end of the stored run; old servers answered `PS_IOV_ADD` (present implied).
/// `nr_pages == 0` means the server does not know the address: an error, never "zeros".
public func validateReply(_ reply: PageServerMessage, to request: PageServerMessage) throws(PageServerError) -> Int {
    let what = "reply to \(request)"
    switch reply.command {
    case PageServerCommand.addWithFlags:
        guard reply.flags & PageServerFlags.present != 0 else {
            throw PageServerError(.protocolViolation, "\(what): PS_IOV_ADD_F without PE_PRESENT (flags 0x\(String(reply.flags, radix: 16))) carries no page data")
        }
    case PageServerCommand.add:
        break
    default:
        throw PageServerError(.protocolViolation, "\(what): wrong command \(PageServerCommand.name(reply.command)) (cmd 0x\(String(reply.cmd, radix: 16))), expected PS_IOV_ADD_F")
    }
    guard reply.address == request.address else {
        throw PageServerError(.protocolViolation, "\(what): wrong address echoed: 0x\(String(reply.address, radix: 16)), asked for 0x\(String(request.address, radix: 16))")
    }
    guard reply.destination == request.destination else {
        throw PageServerError(.protocolViolation, "\(what): wrong pid echoed: dst_id \(reply.destination), asked for \(request.destination)")
    }
    guard reply.pageCount != 0 else {
        throw PageServerError(.protocolViolation, "\(what): nr_pages 0 — the server does not have pages at 0x\(String(request.address, radix: 16)) for pid \(request.destination)")
    }
    guard reply.pageCount <= request.pageCount else {
        throw PageServerError(.protocolViolation, "\(what): oversized nr_pages \(reply.pageCount), asked for \(request.pageCount)")
    }
    return Int(reply.pageCount)
}
