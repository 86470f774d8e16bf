import Foundation
import LazyPagesCRIU
import LazyPagesControl
import LazyPagesEngine
import LinuxSupport
import Logging

/// Turns one request line from one peer into one reply. Every refusal is a reply naming what was wrong, and a log
/// line; nothing else is affected.
struct RequestHandler: Sendable {
    let registry: JobRegistry
    let policy: JobPolicy
    let logger: Logger

    /// Runs a blocking `wait` (the closure) in a slot of its own, or refuses it: the connection's bounds.
    typealias WaitSlot = (_ wait: () -> ControlReply) -> ControlReply

    func reply(to line: [UInt8], from peer: PeerCredentials, waitSlot: WaitSlot = { $0() }) -> ControlReply {
        let request: ControlRequest
        do {
            request = try decode(line)
        } catch {
            return refuse(error.code, error.message, peer: peer, op: nil)
        }
        do {
            return try handle(request, from: peer, waitSlot: waitSlot)
        } catch {
            return refuse(error.code, error.message, peer: peer, op: request.op)
        }
    }

    private func refuse(_ code: ControlReply.ErrorCode, _ message: String, peer: PeerCredentials,
                        op: ControlRequest.Operation?) -> ControlReply
    {
        logger.warning("request refused", metadata: [
            "peer.pid": "\(peer.pid)", "peer.uid": "\(peer.uid)", "op": "\(op?.rawValue ?? "?")",
            "code": "\(code.rawValue)", "error": "\(message)",
        ])
        return .failure(code, message)
    }

    private func decode(_ line: [UInt8]) throws(JobRegistry.Refusal) -> ControlRequest {
        // The version is checked before the rest so that a newer client learns what is wrong.
        struct Versioned: Decodable { var version: Int? }
        let data = Data(line)
        guard let object = try? JSONSerialization.jsonObject(with: data), object is [String: Any] else {
            throw .init(code: .malformed, message: "the request is not a JSON object (one object per line)")
        }
        guard let version = (try? JSONDecoder().decode(Versioned.self, from: data))?.version else {
            throw .init(code: .malformed, message: "the request has no integer \"version\"")
        }
        guard version == ControlProtocol.version else {
            throw .init(code: .unsupportedVersion,
                        message: "protocol version \(version) is not supported (this daemon speaks \(ControlProtocol.version))")
        }
        do {
            return try JSONDecoder().decode(ControlRequest.self, from: data)
        } catch {
            // A job spec the decoder refused (a missing field, a field of the other kind of job) is an invalid job.
            if case .dataCorrupted(let context)? = error as? DecodingError, context.codingPath.first?.stringValue == "job",
                context.codingPath.count == 1
            {
                throw .init(code: .invalidJob, message: context.debugDescription)
            }
            throw .init(code: .malformed, message: "the request is not a valid control request: \(Self.describe(error))")
        }
    }

    static func describe(_ error: any Error) -> String {
        switch error as? DecodingError {
        case .keyNotFound(let key, let context):
            return "missing \"\(path(context.codingPath + [key]))\""
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "\"\(path(context.codingPath))\" has the wrong type"
        case .dataCorrupted(let context):
            return "\"\(path(context.codingPath))\": \(context.debugDescription)"
        default:
            return "\(error)"
        }
    }

    private static func path(_ keys: [any CodingKey]) -> String { keys.map(\.stringValue).joined(separator: ".") }

    private func handle(_ request: ControlRequest, from peer: PeerCredentials, waitSlot: WaitSlot)
        throws(JobRegistry.Refusal) -> ControlReply
    {
        switch request.op {
        case .add:
            guard let spec = request.job else { throw .init(code: .invalidJob, message: "add needs a \"job\"") }
            try JobValidation.check(spec, policy: policy)
            let access = SocketAccess(groupAccess: spec.options.socketGroupAccess ?? false,
                                      allowRoot: policy.allowRootPeers)
            let job = try registry.add(spec: spec, owner: peer) { id, journalDescription, logger in
                try spec.makeSession(uffdLimit: registry.limits.uffdsPerJob, socketAccess: access,
                                     journalDescription: journalDescription, logger: logger)
            }
            logger.info("job added", metadata: [
                "job": "\(job.id)", "peer.uid": "\(peer.uid)", "peer.pid": "\(peer.pid)",
                "front-end": "\(spec.frontEnd.rawValue)", "socket": "\(job.socketPath)",
            ])
            return .success(job: job.info)
        case .list:
            return .success(jobs: registry.jobs(for: peer).map(\.info))
        case .status:
            if let id = request.id { return .success(job: try registry.job(id, for: peer).info) }
            return .success(jobs: registry.jobs(for: peer).map(\.info))
        case .wait:
            let job = try registry.job(try requireID(request), for: peer)
            let timeout = request.timeoutSeconds ?? 365 * 86400
            guard timeout >= 0, timeout.isFinite else {
                throw .init(code: .malformed, message: "\"timeoutSeconds\" must be 0 or more")
            }
            return waitSlot {
                guard job.wait(until: Date(timeIntervalSinceNow: min(timeout, 365 * 86400))) else {
                    return .failure(.timedOut, "job \(job.id) has not ended within \(timeout) s", job: job.info)
                }
                return .success(job: job.info)
            }
        case .cancel:
            let job = try registry.job(try requireID(request), for: peer)
            guard job.cancel(reason: "cancelled by uid \(peer.uid) (pid \(peer.pid))") else {
                return .failure(.alreadyFinished, "job \(job.id) has already ended (\(job.state.0.rawValue))",
                                job: job.info)
            }
            logger.info("job cancel requested", metadata: ["job": "\(job.id)", "peer.uid": "\(peer.uid)"])
            // Cancelling is prompt (one wake-up of the job's loop, then the guardian ends the job's processes, if it
            // has any): report the final state, whose reason says whether processes were ended.
            _ = job.wait(until: Date(timeIntervalSinceNow: 30))
            return .success(job: job.info)
        }
    }

    private func requireID(_ request: ControlRequest) throws(JobRegistry.Refusal) -> String {
        guard let id = request.id else {
            throw .init(code: .malformed, message: "\(request.op.rawValue) needs an \"id\"")
        }
        return id
    }
}

/// The rules a job spec must follow before anything is opened (the decoder already refused missing fields and
/// fields of the other kind of job).
enum JobValidation {
    static func check(_ spec: JobSpec, policy: JobPolicy) throws(JobRegistry.Refusal) {
        func invalid(_ message: String) -> JobRegistry.Refusal { .init(code: .invalidJob, message: message) }
        func absolute(_ value: String?, _ name: String) throws(JobRegistry.Refusal) {
            guard let value else { return }
            guard value.hasPrefix("/") else { throw invalid("\"\(name)\" must be an absolute path, got \"\(value)\"") }
            guard !value.utf8.contains(0), value.utf8.count < 4096 else { throw invalid("\"\(name)\" is not a usable path") }
        }
        switch spec {
        case .criu(let job):
            try absolute(job.workDirectory, "workDirectory")
            try absolute(job.imagesDirectory, "imagesDirectory")
            if let server = job.pageServer {
                guard !server.address.isEmpty, server.port != 0 else {
                    throw invalid("\"pageServer\" needs an address and a non-zero port")
                }
                // Checked before anything is connected: the reply says nothing about whether the host answers.
                guard policy.allows(server) else {
                    throw .init(code: .notAllowed, message: "page server \(server.address):\(server.port) is not allowed "
                        + "by this service (the operator allows page servers with lazy-pagesd serve --allow-page-server); "
                        + "nothing was connected")
                }
            }
        case .firecracker(let job):
            try absolute(job.socketPath, "socketPath")
            try absolute(job.memoryFile, "memoryFile")
        }
        // The engine's one rule for its settings, worded with the protocol's field names.
        do {
            try spec.engineConfiguration(uffdLimit: 1).validate()
        } catch {
            // Only these two are protocol fields; the others keep the engine's defaults, which are in range.
            let field = error.setting == .faultAround ? "faultAround" : error.setting == .fillChunk ? "fillChunk" : error.setting.rawValue
            throw invalid(error.message(naming: "\"\(field)\""))
        }
        if let name = spec.name, name.utf8.count > 128 { throw invalid("\"name\" is longer than 128 bytes") }
    }
}
