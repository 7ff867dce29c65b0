/**
 * shmlink: zero-copy IPC for Node.js. Shared-memory regions are handed to other
 * processes over UNIX sockets with small messages; the receiving side maps the same
 * memory instead of receiving a copy.
 *
 * Sending is a release and receiving an acquire (docs/MEMORY-MODEL.md): what one side
 * wrote to a region before `send()` is what the other side reads after `recv()`.
 *
 * The connection's state lives in the Rust core; this module adds what is JavaScript's
 * own: promises, `AbortSignal`, async iteration, events and object identity.
 * @packageDocumentation
 */
import { EventEmitter } from 'node:events'
import { spawn, type ChildProcess, type SpawnOptions, type StdioOptions } from 'node:child_process'
import { debuglog } from 'node:util'

import * as binding from './binding'
import type {
  EndpointEvent,
  ErrorInfo,
  IncomingRegion,
  LimitsInit,
  NativeEndpoint,
  NativeListener,
  NativePool,
  NativeRegion,
  PeerFilterInit,
  ReceivedInto,
  ReceivedMessage,
} from './binding'

const debug = debuglog('shmlink')
/** Checked before each hot-path `debug()` call, which would otherwise gather its arguments every time. */
const debugging = debug.enabled

/** Every `code` a shmlink error can carry; `docs/ERRORS.md` says what to do about each. */
export type ErrorCode =
  | 'ERR_SHMLINK_CLOSED'
  | 'ERR_SHMLINK_PEER_CLOSED'
  | 'ERR_SHMLINK_PEER_REJECTED'
  | 'ERR_SHMLINK_WOULD_BLOCK'
  | 'ERR_SHMLINK_TIMED_OUT'
  | 'ERR_SHMLINK_PROTOCOL_VIOLATION'
  | 'ERR_SHMLINK_PEER_INCOMPATIBLE'
  | 'ERR_SHMLINK_LIMIT_EXCEEDED'
  | 'ERR_SHMLINK_REGION_UNSEALED'
  | 'ERR_SHMLINK_REGION_SIZE_MISMATCH'
  | 'ERR_SHMLINK_REGION_NOT_MEMFD'
  | 'ERR_SHMLINK_REGION_NOT_SHMEM'
  | 'ERR_SHMLINK_REGION_WRITABLE'
  | 'ERR_SHMLINK_REGION_TRANSFERRED'
  | 'ERR_SHMLINK_REGION_FROZEN'
  | 'ERR_SHMLINK_REGION_BUSY'
  | 'ERR_SHMLINK_REGION_CLOSED'
  | 'ERR_SHMLINK_REGION_TOO_LARGE'
  | 'ERR_SHMLINK_TOO_MANY_REGIONS'
  | 'ERR_SHMLINK_PAYLOAD_TOO_LARGE'
  | 'ERR_SHMLINK_FDS_TRUNCATED'
  | 'ERR_SHMLINK_INVALID_ARG'
  | 'ERR_SHMLINK_ZERO_COPY_UNAVAILABLE'
  | 'ERR_SHMLINK_UNSUPPORTED'
  | 'ERR_SHMLINK_RUNTIME'
  | 'ERR_SHMLINK_OS'
  | 'ERR_SHMLINK_BINARY_NOT_FOUND'

/** An error raised by shmlink. `syscall` and `errno` are set when a system call failed. */
export interface ShmlinkError extends Error {
  code: ErrorCode
  syscall?: string
  errno?: number
}

/** Whether `error` came from shmlink (it has an `ERR_SHMLINK_*` code). */
export function isShmlinkError(error: unknown): error is ShmlinkError {
  const code: unknown = error instanceof Error ? Reflect.get(error, 'code') : undefined
  return typeof code === 'string' && code.startsWith('ERR_SHMLINK_')
}

/** An argument refused before anything reached the native side. */
function invalid(message: string, Kind: ErrorConstructor | TypeErrorConstructor = TypeError): ShmlinkError {
  return Object.assign(new Kind(message), { code: 'ERR_SHMLINK_INVALID_ARG' as const })
}

/** An error the core described in an event. */
function fromInfo(info: ErrorInfo): ShmlinkError {
  const error = Object.assign(new Error(info.message), { code: info.code as ErrorCode })
  if (info.syscall !== undefined) Object.assign(error, { syscall: info.syscall, errno: info.errno })
  return error
}

function abortError(signal: AbortSignal): Error {
  return Object.assign(new Error('The operation was aborted', { cause: signal.reason }), {
    name: 'AbortError',
    code: 'ABORT_ERR',
  })
}

function checkSignal(signal: AbortSignal | undefined): void {
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalid('options.signal must be an AbortSignal')
}

function checkTimeout(timeoutMs: number | undefined): number {
  if (timeoutMs === undefined) return -1
  if (typeof timeoutMs !== 'number' || Number.isNaN(timeoutMs) || timeoutMs < 0) {
    throw invalid('options.timeoutMs must be a non-negative number', RangeError)
  }
  return timeoutMs
}

function checkInteger(value: unknown, name: string, min: number): number {
  if (typeof value !== 'number') throw invalid(`${name} must be a number, not ${typeof value}`)
  if (!Number.isSafeInteger(value) || value < min) {
    throw invalid(`${name} must be an integer >= ${min}, not ${value}`, RangeError)
  }
  return value
}

/** Bytes as the binding takes them: a view of the same memory, never a copy. */
function toBytes(data: unknown, name: string): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data, 'utf8')
  if (data instanceof Uint8Array) return data
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  if (data instanceof ArrayBuffer || data instanceof SharedArrayBuffer) return new Uint8Array(data)
  throw invalid(`${name} must be a string, Buffer, TypedArray, DataView or ArrayBuffer`)
}

/** Memory to copy into, as the binding takes it: a view of it, never a copy. */
function toView(data: unknown, name: string): Uint8Array {
  if (typeof data === 'string') throw invalid(`${name} must be a Buffer, TypedArray, DataView or ArrayBuffer, not a string`)
  return toBytes(data, name)
}

let zeroCopyAvailable: boolean | undefined

/**
 * Whether regions can be shown to JavaScript as zero-copy `Uint8Array`s here. False in
 * runtimes that refuse external buffers (Electron 21 and later, whose V8 memory cage
 * forbids them) and when `SHMLINK_FORCE_COPY=1`; use `region.read()`/`region.write()` then.
 */
export function zeroCopy(): boolean {
  zeroCopyAvailable ??= process.env.SHMLINK_FORCE_COPY !== '1' && binding.externalBuffersAllowed()
  return zeroCopyAvailable
}

/**
 * How this runtime wakes shmlink up: `'uv'` (libuv poll handles: Node, Electron) or
 * `'thread'` (a watching thread: Bun, Deno). `SHMLINK_WAKEUP=thread|uv` overrides it.
 */
export function wakeupBackend(): 'uv' | 'thread' {
  return binding.wakeupBackend() as 'uv' | 'thread'
}

/** The native handle of a Region, for this module only. */
let nativeOf: (region: Region) => NativeRegion
/** The live Region for a region that arrived, for this module only. */
let arrivedRegion: (serial: number, take: () => NativeRegion) => Region

/** Live `Region` objects by the serial of their memory: a region that comes back is the same object. */
const regionsBySerial = new Map<number, WeakRef<Region>>()
const forgetRegion = new FinalizationRegistry<number>((serial) => {
  if (regionsBySerial.get(serial)?.deref() === undefined) regionsBySerial.delete(serial)
})

/**
 * A block of shared memory: an anonymous, size-sealed memory file that can be handed to
 * other processes. Nothing appears in `/dev/shm`, so a crash leaves nothing behind.
 */
export class Region implements Disposable {
  readonly #native: NativeRegion
  #view: Uint8Array | undefined

  private constructor(native: NativeRegion) {
    this.#native = native
    regionsBySerial.set(native.serial, new WeakRef(this))
    forgetRegion.register(this, native.serial)
  }

  static {
    nativeOf = (region) => region.#native
    arrivedRegion = (serial, take) => regionsBySerial.get(serial)?.deref() ?? new Region(take())
  }

  /** A new, zero-filled region of `size` bytes. */
  static create(size: number): Region {
    return new Region(binding.NativeRegion.create(checkInteger(size, 'size', 1)))
  }

  /** Size in bytes (0 once closed). */
  get size(): number {
    return this.#native.size
  }

  /** Whether `freeze()` made the contents immutable for every process. */
  get frozen(): boolean {
    return this.#native.frozen
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#native.closed
  }

  /** Whether the region was transferred to a peer and has not come back (or been reclaimed). */
  get transferred(): boolean {
    return this.#native.transferred
  }

  /** Whether `bytes` is available (see {@link zeroCopy}). */
  get zeroCopy(): boolean {
    return zeroCopy()
  }

  /**
   * The region's memory as a `Uint8Array`, without copying. The same view is returned
   * until the region is closed or transferred, which detach every view of it (old views
   * then have length 0; take `bytes` again once the region is back). While a peer can
   * write the region, this is memory another process changes at any time, like a
   * `SharedArrayBuffer`: copy with `read()` before decoding or parsing untrusted data.
   * Writes to a frozen region's view change a private copy that nobody else sees.
   * V8 counts each new view as external memory: the first view of a region of 64 MiB or
   * more starts a garbage collection; a {@link RegionPool} makes its views once.
   */
  get bytes(): Uint8Array {
    if (!zeroCopy()) {
      throw Object.assign(
        new Error('this runtime refuses external buffers (Electron memory cage or SHMLINK_FORCE_COPY=1); use region.read() and region.write()'),
        { code: 'ERR_SHMLINK_ZERO_COPY_UNAVAILABLE' as const },
      )
    }
    if (this.#view === undefined || this.#view.byteLength === 0) this.#view = this.#native.lend()
    return this.#view
  }

  /**
   * Copies `length` bytes starting at `offset` out of the region into a new Buffer
   * (`ERR_SHMLINK_REGION_TOO_LARGE` when no Buffer can hold them). For a frozen region
   * this is the frozen contents, whatever was written to its `bytes`.
   */
  read(offset = 0, length?: number): Buffer {
    checkInteger(offset, 'offset', 0)
    const count = length === undefined ? Math.max(0, this.#native.size - offset) : checkInteger(length, 'length', 0)
    return this.#native.read(offset, count)
  }

  /** Copies bytes starting at `offset` into `target`, as many as fit in it; returns how many. */
  readInto(offset: number, target: ArrayBufferView): number {
    checkInteger(offset, 'offset', 0)
    return this.#native.readInto(offset, toBytes(target, 'target'))
  }

  /** Copies `data` into the region starting at `offset` (one copy; `data` may be a view of any region). */
  write(offset: number, data: string | ArrayBufferView | ArrayBuffer): void {
    checkInteger(offset, 'offset', 0)
    this.#native.write(offset, toBytes(data, 'data'))
  }

  /**
   * Makes the contents immutable for every process (`F_SEAL_WRITE`). Freeze before
   * sharing: it fails with `ERR_SHMLINK_REGION_BUSY` while a peer maps the region
   * writable, and leaves the region as it was. Do not freeze while an asynchronous
   * operation writes into `bytes`.
   */
  freeze(): this {
    this.#native.freeze()
    return this
  }

  /**
   * Takes back a region transferred over a connection that has since ended (the peer
   * closed or died), so a pipeline can reuse its buffers. A peer that passed the region
   * on may still reach its memory (docs/MEMORY-MODEL.md §5.1). Fails with
   * `ERR_SHMLINK_REGION_TRANSFERRED` while that connection is open.
   */
  reclaim(): this {
    this.#native.reclaim()
    return this
  }

  /**
   * Lets go of the region now: views are detached, peers it was sent to are told they
   * may unmap it, and its memory is released without waiting for the garbage collector.
   */
  close(): void {
    this.#native.close()
    this.#view = undefined
    // A pooled region that closes frees its place: an acquire waiting for one gets it now.
    for (const serve of poolsWaiting) serve()
  }

  [Symbol.dispose](): void {
    this.close()
  }
}

/** What the descriptor of a received region said (`docs/PROTOCOL.md` §2). */
export interface Descriptor {
  /** The id the sender gave the region on this connection. */
  readonly id: number
  /** Whether the region's file descriptor came with this message. */
  readonly new: boolean
  /** Whether the region is frozen. */
  readonly frozen: boolean
  /** Whether the sender gave up access to it (a transfer). */
  readonly transferred: boolean
}

/** A received message. */
export interface Message {
  /** The inline payload (at most 64 KiB; larger data travels in regions). */
  readonly payload: Buffer
  /** The attached regions, in the order the sender attached them. */
  readonly regions: Region[]
  /** One descriptor per region, as it arrived. */
  readonly descriptors: readonly Descriptor[]
}

export interface SendOptions {
  /** Regions to attach, in the order the peer receives them; both sides keep access. */
  regions?: readonly Region[]
  /**
   * Regions to hand over: detached here until the peer sends them back. A region also in
   * `regions` keeps its place there; the others are attached after `regions`.
   */
  transfer?: readonly Region[]
  /** Aborts a send still waiting for room in the socket. */
  signal?: AbortSignal
}

export interface SendSyncOptions extends Omit<SendOptions, 'signal'> {
  /** How long to wait for room; forever when absent. */
  timeoutMs?: number
}

export interface RecvOptions {
  signal?: AbortSignal
}

export interface RecvSyncOptions {
  /**
   * How long to wait; forever when absent, 0 to take only what is already there. Counted
   * from when the call has to wait; with a ring it never spins longer than this.
   */
  timeoutMs?: number
  /**
   * Memory to receive the payload into, reused from call to call: the message's `payload`
   * is then a `Buffer` over its first bytes, and no memory is allocated for it. That
   * `Buffer` shows what the next receive into the same memory writes there: copy out
   * what you keep. A payload longer than `into` is not received: the call throws
   * `ERR_SHMLINK_PAYLOAD_TOO_LARGE` and the message stays first in line. One of the
   * endpoint's `maxPayload` bytes (64 KiB unless changed) holds any payload. A region's
   * `bytes` work too, but the peer sharing that region can then change the payload.
   */
  into?: ArrayBufferView | ArrayBuffer
}

/** Limits on what a peer may send and make this side hold (docs/SECURITY.md). */
export type Limits = LimitsInit

/** Which peers to accept: `'same-user'` (this user or root), `'any-user'`, or a list of uids. */
export type PeerFilter = 'same-user' | 'any-user' | { uids: readonly number[] }

/**
 * The low-latency path (docs/PROTOCOL.md §9, docs/ARCHITECTURE.md "Rings"): a shared-memory
 * ring per direction, used when both sides offer it. Off by default: it pays only with
 * busy-polling, which spends CPU time while waiting.
 */
export interface RingOptions {
  /** Offer a ring in the handshake; small messages then skip the socket. Default false. */
  ring?: boolean
  /**
   * With a ring: how long (µs) a waiting receive spins before it sleeps (never longer
   * than its `timeoutMs`), and how long the event loop keeps polling the ring after
   * delivering messages. Adaptive up to this; 0 never spins. Default 50, except in an
   * Electron main process (0: it runs the UI).
   */
  busyPollUs?: number
}

/** The limits' names; the first three are 32-bit counts in the protocol. */
const LIMIT_NAMES = ['maxRegions', 'maxPayload', 'maxBoundRegions', 'maxRegionSize', 'maxMappedBytes'] as const

/**
 * The endpoint options the binding takes, their types checked here so that a wrong one
 * fails with a code, and the busy-poll window defaulted for this process type.
 */
function endpointOptions(options: EndpointOptionsInit): EndpointOptionsInit {
  if (typeof options !== 'object' || options === null) throw invalid('options must be an object')
  const { acceptWritable, ring } = options
  checkBoolean(acceptWritable, 'options.acceptWritable')
  checkBoolean(ring, 'options.ring')
  const busyPollUs = options.busyPollUs === undefined ? undefined : checkInteger(options.busyPollUs, 'options.busyPollUs', 0)
  const electronMain = (process as { type?: string }).type === 'browser'
  return {
    acceptWritable,
    limits: checkLimits(options.limits),
    ring,
    busyPollUs: busyPollUs ?? (electronMain ? 0 : undefined),
  }
}

function checkBoolean(value: unknown, name: string): void {
  if (value !== undefined && typeof value !== 'boolean') throw invalid(`${name} must be a boolean, not ${typeof value}`)
}

function checkLimits(limits: Limits | undefined): Limits | undefined {
  if (limits === undefined) return undefined
  if (typeof limits !== 'object' || limits === null) throw invalid('options.limits must be an object')
  for (const [name, value] of Object.entries(limits)) {
    const index = LIMIT_NAMES.indexOf(name as (typeof LIMIT_NAMES)[number])
    if (index < 0) throw invalid(`options.limits.${name} is not a limit; the limits are ${LIMIT_NAMES.join(', ')}`)
    if (value === undefined) continue
    if (index < 3) checkCount32(value, `options.limits.${name}`)
    else checkInteger(value, `options.limits.${name}`, 0)
  }
  return limits
}

/** A count the binding takes as 32 bits (larger ones would wrap around there). */
function checkCount32(value: unknown, name: string): number {
  const count = checkInteger(value, name, 0)
  if (count > 0xffff_ffff) throw invalid(`${name} must be at most 4294967295, not ${count}`, RangeError)
  return count
}

export interface ConnectOptions extends RecvOptions, RingOptions {
  /** Who must be serving (checked with `SO_PEERCRED` before anything is sent); default `'same-user'`. */
  server?: PeerFilter
  /** Accept regions the server can still write; default false (frozen regions only). */
  acceptWritable?: boolean
  limits?: Limits
}

export interface ListenOptions extends RingOptions {
  /** Who may connect (checked before anything is read); default `'same-user'`. */
  allow?: PeerFilter
  /** Accept regions clients can still write; default false (frozen regions only). */
  acceptWritable?: boolean
  limits?: Limits
  /** Accepted connections not yet taken with `accept()`, at most (default 64). */
  maxPending?: number
}

export interface EndpointOptionsInit extends RingOptions {
  /** Accept regions the peer can still write; default true for peers this process starts. */
  acceptWritable?: boolean
  limits?: Limits
}

/** Who is at the other end of a connection, as the kernel recorded it (`SO_PEERCRED`). */
export interface PeerCredentials {
  pid: number
  uid: number
  gid: number
}

function peerFilter(filter: PeerFilter | undefined): PeerFilterInit | undefined {
  if (filter === undefined || filter === 'same-user') return undefined
  if (filter === 'any-user') return { anyUser: true }
  if (typeof filter === 'object' && filter !== null && Array.isArray(filter.uids)) {
    return { uids: filter.uids.map((uid, i) => checkCount32(uid, `uids[${i}]`)) }
  }
  throw invalid("a peer filter is 'same-user', 'any-user' or { uids: [...] }")
}

/**
 * A message as the binding hands it over: the length of a short payload it left in the
 * endpoint's staging memory, or the payload itself, with the regions described in the
 * staging memory; or, where there is none (a memory cage), an object when regions came.
 */
type Received = number | Buffer | ReceivedMessage

/** Where the binding stages what it receives (see `NativeEndpoint.staging`). */
interface Staging {
  payload: Buffer
  regions: Float64Array
}

/** The flags of a staged region description (src-rs/napi/buffer.rs sets the same bits). */
const STAGED_NEW = 1
const STAGED_FROZEN = 2
const STAGED_TRANSFERRED = 4

function toMessage(native: NativeEndpoint, staging: Staging | undefined, received: Received): Message {
  if (typeof received === 'number' || Buffer.isBuffer(received)) {
    const payload = typeof received === 'number' ? unstage(staging!.payload, received) : received
    return withStagedRegions(native, staging, payload)
  }
  return withRegions(native, received.payload, received.regions)
}

/** Memory `recvSync` receives into: a byte view of the caller's `into`, and where it lies. */
interface Target {
  view: Uint8Array
  buffer: ArrayBufferLike
  offset: number
}

/** The message `recvSync` received into `into`: its length, and its regions staged or listed. */
function intoMessage(native: NativeEndpoint, staging: Staging | undefined, into: Target, received: number | ReceivedInto): Message {
  const length = typeof received === 'number' ? received : received.length
  // An empty payload needs none of into's memory, which may even be detached.
  const payload = length === 0 ? Buffer.alloc(0) : Buffer.from(into.buffer, into.offset, length)
  if (typeof received === 'number') return withStagedRegions(native, staging, payload)
  return withRegions(native, payload, received.regions)
}

function withStagedRegions(native: NativeEndpoint, staging: Staging | undefined, payload: Buffer): Message {
  const count = staging?.regions[0] ?? 0
  if (count === 0) return { payload, regions: [], descriptors: [] }
  return withRegions(native, payload, stagedRegions(staging!.regions, count))
}

/** The `count` region descriptions in the staging memory, read out before any other call. */
function stagedRegions(slots: Float64Array, count: number): IncomingRegion[] {
  const incoming: IncomingRegion[] = new Array(count)
  for (let i = 0; i < count; i++) {
    const word = slots[2 + 2 * i]
    const flags = word % 8
    incoming[i] = {
      serial: slots[1 + 2 * i],
      id: (word - flags) / 8,
      new: (flags & STAGED_NEW) !== 0,
      frozen: (flags & STAGED_FROZEN) !== 0,
      transferred: (flags & STAGED_TRANSFERRED) !== 0,
    }
  }
  return incoming
}

function withRegions(native: NativeEndpoint, payload: Buffer, incoming: IncomingRegion[]): Message {
  return {
    payload,
    regions: incoming.map((d, i) => arrivedRegion(d.serial, () => native.takeRegion(i))),
    descriptors: incoming.map(({ id, new: isNew, frozen, transferred }) => ({ id, new: isNew, frozen, transferred })),
  }
}

/**
 * The first `length` bytes of the staging memory, in a Buffer of their own: copied before
 * anything else calls into the endpoint, which may fill the staging memory again.
 */
function unstage(staging: Buffer, length: number): Buffer {
  const payload = Buffer.allocUnsafeSlow(length)
  if (length <= 64) for (let i = 0; i < length; i++) payload[i] = staging[i]
  else staging.copy(payload, 0, 0, length)
  return payload
}

/** What a send attaches: its regions in order, and which of them it hands over. */
interface Attached {
  regions: NativeRegion[]
  /** Parallel to `regions`; undefined when none is handed over. */
  transfers: boolean[] | undefined
}

/** The attachments of a send: `regions` in order, then the rest of `transfer`. */
function attachments(options: SendOptions): Attached | undefined {
  const shared = options.regions ?? []
  const moved = options.transfer ?? []
  if (!Array.isArray(shared) || !Array.isArray(moved)) throw invalid('options.regions and options.transfer must be arrays')
  if (shared.length === 0 && moved.length === 0) return undefined
  const all = moved.length === 0 ? shared : [...shared, ...moved.filter((region) => !shared.includes(region))]
  const regions = all.map((region) => {
    if (!(region instanceof Region)) throw invalid('options.regions and options.transfer hold Regions only')
    return nativeOf(region)
  })
  return { regions, transfers: moved.length === 0 ? undefined : all.map((region) => moved.includes(region)) }
}

interface Waiter<T> {
  resolve(value: T): void
  reject(error: Error): void
}

/**
 * A promise that `register` hands to whoever settles it, and that `signal` rejects with
 * an AbortError if `cancel` can still withdraw it (false: too late, it settles as usual).
 */
function pending<T>(signal: AbortSignal | undefined, register: (waiter: Waiter<T>) => void, cancel: (waiter: Waiter<T>) => boolean): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      if (cancel(waiter)) reject(abortError(signal!))
    }
    const waiter: Waiter<T> = {
      resolve: (value) => {
        signal?.removeEventListener('abort', onAbort)
        resolve(value)
      },
      reject: (error) => {
        signal?.removeEventListener('abort', onAbort)
        reject(error)
      },
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    register(waiter)
  })
}

function remove<T>(list: T[], item: T): boolean {
  const index = list.indexOf(item)
  if (index >= 0) list.splice(index, 1)
  return index >= 0
}

/** What `send()` returns when the message left at once. */
const SENT = Promise.resolve()

/** Module-private constructors of the classes below. */
let wrapEndpoint: (native: NativeEndpoint) => Endpoint
let newServer: (native: NativeListener) => Server

/** Events an {@link Endpoint} emits. */
export interface EndpointEvents {
  /** A message, when no `recv()` waits for it (each message goes to exactly one of the two). */
  message: [message: Message]
  /** The connection ended: with the error that ended it, or nothing after `close()`. */
  close: [reason?: ShmlinkError]
}

/**
 * One end of a connection. Sending is non-blocking with backpressure (a full socket makes
 * `send()` wait, never drop or reorder); receiving runs on the event loop.
 */
export class Endpoint extends EventEmitter<EndpointEvents> implements AsyncIterable<Message>, Disposable {
  #native: NativeEndpoint | undefined
  /** `send`, `sendSync`, `recv`, `recvSync` bound to the native endpoint: cheaper to call. */
  readonly #calls: ReturnType<NativeEndpoint['boundCalls']>
  /** Where the binding leaves short payloads and region descriptions; undefined in a memory cage. */
  readonly #staging: Staging | undefined
  /** The `into` of the last `recvSync` given one. */
  #lastTarget: Target | undefined
  /** Why the connection ended, once it has. */
  #ended: ShmlinkError | undefined
  readonly #waiters: Waiter<Message>[] = []
  readonly #sends = new Map<number, Waiter<void>>()
  readonly #handshakes: Waiter<void>[] = []
  /** `close()` is ending the connection: the core's own report of it is not the reason. */
  #closing = false

  private constructor(native: NativeEndpoint) {
    super()
    this.#native = native
    this.#calls = native.boundCalls()
    // In a memory cage (or as if in one) the binding makes every payload a Buffer itself.
    const staging = zeroCopy() ? native.staging() : null
    this.#staging = staging === null ? undefined : { payload: Buffer.from(staging.payload.buffer, staging.payload.byteOffset, staging.payload.length), regions: staging.regions }
    native.watch(this.#onMessage, this.#onEvent)
    const untyped: EventEmitter = this
    untyped.on('newListener', this.#listenersChanged).on('removeListener', this.#listenersChanged)
  }

  static {
    wrapEndpoint = (native) => new Endpoint(native)
  }

  /** A connected pair of endpoints, for worker threads or a process you spawn yourself. */
  static pair(options: EndpointOptionsInit = {}): [Endpoint, Endpoint] {
    const [a, b] = binding.NativeEndpoint.pair(endpointOptions(options))
    return [new Endpoint(a), new Endpoint(b)]
  }

  /**
   * Connects to an {@link Endpoint.listen} server at `path` (a path starting with a NUL
   * byte is a Linux abstract name) run by `options.server` (by default this user), and
   * resolves once the handshake has succeeded. Only frozen regions are accepted from the
   * server unless `acceptWritable` is set.
   */
  static async connect(path: string, options: ConnectOptions = {}): Promise<Endpoint> {
    if (typeof path !== 'string') throw invalid('path must be a string')
    const common = endpointOptions(options)
    checkSignal(options.signal)
    const native = binding.NativeEndpoint.connect(path, { server: peerFilter(options.server), ...common })
    const endpoint = new Endpoint(native)
    try {
      await endpoint.#handshake(options.signal)
    } catch (error) {
      endpoint.close()
      throw error
    }
    return endpoint
  }

  /**
   * Takes over a connected `SOCK_SEQPACKET` socket descriptor (it is closed with the
   * endpoint), such as one a parent process passed down.
   */
  static fromFd(fd: number, options: EndpointOptionsInit = {}): Endpoint {
    return new Endpoint(binding.NativeEndpoint.fromFd(checkInteger(fd, 'fd', 0), endpointOptions(options)))
  }

  /**
   * In a process started by {@link spawnWithEndpoint} (or any parent that sets
   * `SHMLINK_FD`, docs/LANGUAGES.md): the endpoint its parent passed down.
   */
  static inherited(options: EndpointOptionsInit = {}): Endpoint {
    const endpoint = new Endpoint(binding.NativeEndpoint.inherited(endpointOptions(options)))
    delete process.env.SHMLINK_FD
    return endpoint
  }

  /** Listens at `path`; the server is an async iterable of accepted endpoints. */
  static listen(path: string, options: ListenOptions = {}): Server {
    if (typeof path !== 'string') throw invalid('path must be a string')
    const common = endpointOptions(options)
    return newServer(
      binding.NativeListener.bind(path, {
        allow: peerFilter(options.allow),
        maxPending: options.maxPending === undefined ? undefined : checkCount32(options.maxPending, 'options.maxPending'),
        ...common,
      }),
    )
  }

  /** Identifies this connection within the process (in `NODE_DEBUG=shmlink` logs too). */
  get id(): number {
    return this.#native?.id ?? 0
  }

  /** The socket's file descriptor (-1 once closed). */
  get fd(): number {
    return this.#native?.fd ?? -1
  }

  /** Whether the connection is over (closed here, by the peer, or after an error). */
  get closed(): boolean {
    return this.#ended !== undefined || this.#native === undefined
  }

  /** The peer's process, user and group ids (for a socketpair: those of its creator). */
  get peer(): PeerCredentials {
    return this.#live().peer()
  }

  /** Traffic and binding counters, and the limits in force. */
  stats(): binding.EndpointStats {
    return this.#live().stats()
  }

  /** This side's id for `region` on this connection while the peer has it bound (the id the peer sees). */
  regionId(region: Region): number | undefined {
    return this.#live().regionId(nativeOf(region)) ?? undefined
  }

  #live(): NativeEndpoint {
    if (this.#native === undefined) throw this.#ended ?? Object.assign(new Error('the endpoint is closed'), { code: 'ERR_SHMLINK_CLOSED' as const })
    return this.#native
  }

  readonly #onMessage = (received: Received): boolean => {
    const message = toMessage(this.#native!, this.#staging, received)
    if (debugging) this.#logRecv(message)
    const waiter = this.#waiters.shift()
    if (waiter !== undefined) waiter.resolve(message)
    else if (this.listenerCount('message') > 0) this.emit('message', message)
    else return false
    return true
  }

  readonly #onEvent = (event: EndpointEvent): void => {
    switch (event.type) {
      case 'sent':
        if (debugging) debug('connection %d: queued sends up to #%d left', this.id, event.through)
        for (const [ticket, waiter] of this.#sends) {
          if (ticket > event.through) break
          this.#sends.delete(ticket)
          waiter.resolve()
        }
        break
      case 'sendFailed':
        this.#sends.get(event.ticket)?.reject(fromInfo(event.error))
        this.#sends.delete(event.ticket)
        break
      case 'handshake':
        for (const waiter of this.#handshakes.splice(0)) waiter.resolve()
        this.#native?.hold(this.#isHeld())
        break
      case 'closed':
        if (!this.#closing) this.#end(fromInfo(event.error))
        break
    }
  }

  readonly #listenersChanged = (event: string | symbol): void => {
    if (event !== 'message' && event !== 'close') return
    // 'newListener' fires before the listener is added, 'removeListener' after it is gone.
    process.nextTick(() => {
      this.#native?.setListening(this.listenerCount('message') > 0)
      this.#native?.hold(this.#isHeld())
    })
  }

  #isHeld(): boolean {
    return this.#handshakes.length > 0 || this.listenerCount('close') > 0 || this.listenerCount('message') > 0
  }

  #logSend(bytes: Uint8Array, attached: Attached | undefined, ticket: number): void {
    const native = this.#native!
    const regions = (attached?.regions ?? []).map((region, i) => {
      const flags = `${region.frozen ? ':frozen' : ''}${attached?.transfers?.[i] ? ':transfer' : ''}`
      return `${native.regionId(region) ?? 'new'}:${region.size}${flags}`
    })
    const waiting = native.handshakeComplete ? 'the socket is full' : "waiting for the peer's HELLO: has it started reading?"
    debug('connection %d send %d bytes, %d regions [%s]%s', this.id, bytes.byteLength, regions.length, regions.join(' '), ticket === 0 ? '' : ` queued as #${ticket} (${waiting})`)
  }

  #logRecv(message: Message): void {
    const regions = message.descriptors.map((d, i) => `${d.id}:${message.regions[i].size}${d.new ? ':new' : ''}${d.frozen ? ':frozen' : ''}${d.transferred ? ':transfer' : ''}`)
    debug('connection %d recv %d bytes, %d regions [%s]', this.id, message.payload.byteLength, regions.length, regions.join(' '))
  }

  /**
   * Sends `payload` with regions attached. Resolves once the message is in the socket;
   * waits (in order behind earlier sends) while the socket is full.
   */
  send(payload: string | ArrayBufferView | ArrayBuffer, options: SendOptions = {}): Promise<void> {
    let ticket: number
    try {
      checkSignal(options.signal)
      if (options.signal?.aborted) return Promise.reject(abortError(options.signal))
      const bytes = toBytes(payload, 'payload')
      const attached = attachments(options)
      this.#live()
      ticket =
        attached === undefined
          ? this.#calls.send(bytes)
          : attached.transfers === undefined
            ? this.#calls.send(bytes, attached.regions)
            : this.#calls.send(bytes, attached.regions, attached.transfers)
      if (debugging) this.#logSend(bytes, attached, ticket)
    } catch (error) {
      return Promise.reject(error)
    }
    if (ticket === 0) return SENT
    return pending<void>(
      options.signal,
      (waiter) => this.#sends.set(ticket, waiter),
      () => (this.#native?.cancel(ticket) ?? false) && this.#sends.delete(ticket),
    )
  }

  /** Sends behind anything queued, blocking the thread until there is room (or `timeoutMs` passes). */
  sendSync(payload: string | ArrayBufferView | ArrayBuffer, options: SendSyncOptions = {}): void {
    const timeoutMs = checkTimeout(options.timeoutMs)
    const bytes = toBytes(payload, 'payload')
    const attached = attachments(options)
    this.#live()
    // Arguments left out cost the binding no type check.
    if (attached === undefined) this.#calls.sendSync(bytes, timeoutMs)
    else if (attached.transfers === undefined) this.#calls.sendSync(bytes, timeoutMs, attached.regions)
    else this.#calls.sendSync(bytes, timeoutMs, attached.regions, attached.transfers)
  }

  /** Resolves with the next message. */
  recv(options: RecvOptions = {}): Promise<Message> {
    const { signal } = options
    let received: Received | null
    try {
      checkSignal(signal)
      if (signal?.aborted) return Promise.reject(abortError(signal))
      this.#live()
      received = this.#calls.recv()
    } catch (error) {
      return Promise.reject(error)
    }
    if (received !== null) {
      const message = toMessage(this.#native!, this.#staging, received)
      if (debugging) this.#logRecv(message)
      return Promise.resolve(message)
    }
    return pending<Message>(
      signal,
      (waiter) => this.#waiters.push(waiter),
      (waiter) => remove(this.#waiters, waiter) && (this.#native?.unwant(), true),
    )
  }

  /** Receives the next message, blocking the thread (for CLIs and worker threads). */
  recvSync(options: RecvSyncOptions = {}): Message {
    const timeoutMs = checkTimeout(options.timeoutMs)
    const into = options.into === undefined ? undefined : this.#target(toView(options.into, 'options.into'))
    const native = this.#live()
    if (into === undefined) return toMessage(native, this.#staging, this.#calls.recvSync(timeoutMs))
    return intoMessage(native, this.#staging, into, this.#calls.recvSync(timeoutMs, into.view))
  }

  /**
   * Where `view` lies, kept while the same view comes back (a Buffer or Uint8Array passed
   * as `into` is its own view): reading `.buffer` is a call into V8's runtime.
   */
  #target(view: Uint8Array): Target {
    if (this.#lastTarget?.view !== view) this.#lastTarget = { view, buffer: view.buffer, offset: view.byteOffset }
    return this.#lastTarget
  }

  /**
   * Messages until the connection ends, for `for await`. Ends quietly when either side
   * closes the connection; `signal` aborts a wait. Leaving the loop (`break`) leaves the
   * endpoint open, unlike a Node stream: close it yourself when you are done.
   */
  messages(options: RecvOptions = {}): AsyncIterableIterator<Message> {
    const next = (): Promise<IteratorResult<Message>> =>
      this.recv(options).then(
        (value) => ({ value, done: false }),
        (error: ShmlinkError) => {
          if (error.code === 'ERR_SHMLINK_PEER_CLOSED' || error.code === 'ERR_SHMLINK_CLOSED') return { value: undefined, done: true }
          throw error
        },
      )
    const iterator: AsyncIterableIterator<Message> = {
      next,
      return: () => Promise.resolve({ value: undefined, done: true }),
      [Symbol.asyncIterator]: () => iterator,
    }
    return iterator
  }

  /** `for await (const message of endpoint)`: {@link Endpoint.messages} without a signal. */
  [Symbol.asyncIterator](): AsyncIterator<Message> {
    return this.messages()
  }

  /** Tells the peer this side will not refer to `region` again (it may unmap it); the next send passes it anew. */
  release(region: Region): void {
    this.#native?.release(nativeOf(region))
  }

  /** Closes the connection: the peer sees it end; waiting calls reject with `ERR_SHMLINK_CLOSED`. */
  close(): void {
    const native = this.#native
    if (native === undefined) return
    this.#closing = true
    native.close()
    this.#native = undefined
    this.#lastTarget = undefined
    this.#end(undefined)
  }

  #handshake(signal?: AbortSignal): Promise<void> {
    if (this.#native?.handshakeComplete) return Promise.resolve()
    if (this.#ended !== undefined) return Promise.reject(this.#ended)
    if (signal?.aborted) return Promise.reject(abortError(signal))
    this.#native?.hold(true)
    return pending<void>(
      signal,
      (waiter) => this.#handshakes.push(waiter),
      (waiter) => remove(this.#handshakes, waiter),
    )
  }

  /** The connection ended (`reason`), or `close()` was called (no reason). */
  #end(reason: ShmlinkError | undefined): void {
    if (this.#ended !== undefined && reason !== undefined) return
    const error = reason ?? Object.assign(new Error('the endpoint was closed'), { code: 'ERR_SHMLINK_CLOSED' as const })
    const first = this.#ended === undefined
    this.#ended ??= error
    if (debugging) debug('connection %d ended: %s', this.id, error.message)
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error)
    for (const waiter of this.#handshakes.splice(0)) waiter.reject(error)
    for (const waiter of this.#sends.values()) waiter.reject(error)
    this.#sends.clear()
    if (first) process.nextTick(() => this.emit('close', reason))
    for (const serve of poolsWaiting) serve()
  }

  /** Lets the process exit even while this endpoint waits for messages. */
  unref(): this {
    this.#native?.setRef(false)
    return this
  }

  /** Undoes {@link Endpoint.unref}. */
  ref(): this {
    this.#native?.setRef(true)
    return this
  }

  [Symbol.dispose](): void {
    this.close()
  }
}

/** Events a {@link Server} emits. */
export interface ServerEvents {
  /** A connection, when no `accept()` waits for it. */
  connection: [endpoint: Endpoint]
  close: []
}

/** A listening socket; iterate it (or listen for `'connection'`) to accept endpoints. */
export class Server extends EventEmitter<ServerEvents> implements AsyncIterable<Endpoint>, Disposable {
  #native: NativeListener | undefined
  readonly #path: string
  readonly #waiters: Waiter<Endpoint>[] = []

  private constructor(native: NativeListener) {
    super()
    this.#native = native
    this.#path = native.path
    native.watch(this.#onConnection)
    const untyped: EventEmitter = this
    untyped.on('newListener', this.#listenersChanged).on('removeListener', this.#listenersChanged)
  }

  static {
    newServer = (native) => new Server(native)
  }

  /** The path it listens at. */
  get path(): string {
    return this.#path
  }

  /** Connections refused by the `allow` filter so far. */
  get rejected(): number {
    return this.#native?.rejected ?? 0
  }

  readonly #onConnection = (): void => {
    for (;;) {
      const wantsOne = this.#waiters.length > 0 || this.listenerCount('connection') > 0
      const native = wantsOne ? this.#native?.take() : null
      if (native == null) break
      const endpoint = wrapEndpoint(native)
      const waiter = this.#waiters.shift()
      if (waiter !== undefined) waiter.resolve(endpoint)
      else this.emit('connection', endpoint)
    }
    this.#hold()
  }

  readonly #listenersChanged = (event: string | symbol): void => {
    if (event === 'connection') process.nextTick(this.#onConnection)
  }

  #hold(): void {
    this.#native?.hold(this.#waiters.length > 0 || this.listenerCount('connection') > 0)
  }

  /** Resolves with the next accepted connection. */
  accept(): Promise<Endpoint> {
    if (this.#native === undefined) return Promise.reject(Object.assign(new Error('the server is closed'), { code: 'ERR_SHMLINK_CLOSED' as const }))
    const pending = this.#native.take()
    if (pending !== null) return Promise.resolve(wrapEndpoint(pending))
    return new Promise<Endpoint>((resolve, reject) => {
      this.#waiters.push({ resolve, reject })
      this.#hold()
    })
  }

  [Symbol.asyncIterator](): AsyncIterator<Endpoint> {
    return {
      next: async () => {
        try {
          return { value: await this.accept(), done: false }
        } catch (error) {
          if ((error as ShmlinkError).code === 'ERR_SHMLINK_CLOSED') return { value: undefined, done: true }
          throw error
        }
      },
      return: async () => {
        this.close()
        return { value: undefined, done: true }
      },
    }
  }

  /** Stops listening and removes the socket file. Connections already accepted stay open. */
  close(): void {
    const native = this.#native
    if (native === undefined) return
    this.#native = undefined
    native.close()
    const closed = Object.assign(new Error('the server is closed'), { code: 'ERR_SHMLINK_CLOSED' as const })
    for (const waiter of this.#waiters.splice(0)) waiter.reject(closed)
    process.nextTick(() => this.emit('close'))
  }

  unref(): this {
    this.#native?.setRef(false)
    return this
  }

  ref(): this {
    this.#native?.setRef(true)
    return this
  }

  [Symbol.dispose](): void {
    this.close()
  }
}

/** Pools with acquires waiting: a connection that ends may let them take a region back. */
const poolsWaiting = new Set<() => void>()

/** What {@link RegionPool} holds and has done. */
export type PoolStats = binding.PoolStats

/**
 * A fixed set of regions of one size, handed out and given back for reuse, so a stream of
 * frames maps and faults in its memory once instead of per frame: a region the peer has
 * seen before travels as an id, without a descriptor, a mapping or page faults on either
 * side (docs/BENCHMARKS.md has the figures).
 *
 * ```ts
 * const pool = new RegionPool({ size: FRAME, capacity: 3 })
 * endpoint.on('message', ({ regions }) => regions.forEach((r) => pool.release(r)))
 * for (const frame of frames) {
 *   const region = await pool.acquire()   // waits while all 3 are with the consumer
 *   region.write(0, frame)
 *   await endpoint.send('frame', { regions: [region] })   // the consumer sends it back when done
 * }
 * ```
 *
 * A region goes back with {@link RegionPool.release} once it is here again (the peer sent
 * it back); one transferred over a connection the peer then ended is taken back by the
 * next acquire, as `reclaim()` would. Closing a pooled region makes it leave the pool and
 * frees its place at once (a waiting acquire gets a new one); a frozen region, which
 * cannot be written again, leaves when it is released (it is closed then). A reused region
 * holds what was last written to it.
 */
export class RegionPool implements Disposable {
  readonly #native: NativePool
  /** The pool's Region objects, kept alive so a reused region keeps its view. */
  readonly #members = new Set<Region>()
  readonly #waiters: Waiter<Region>[] = []
  readonly #serve = (): void => this.#serveWaiters()

  /** A pool of at most `capacity` (default 4) regions of `size` bytes each; none is created yet. */
  constructor(options: { size: number; capacity?: number }) {
    if (typeof options !== 'object' || options === null) throw invalid('RegionPool takes { size, capacity? }')
    this.#native = new binding.NativePool(checkInteger(options.size, 'size', 1), checkInteger(options.capacity ?? 4, 'capacity', 1))
  }

  /** A free or new region, or `undefined` when all are handed out (and none can be taken back). */
  tryAcquire(): Region | undefined {
    if (this.#waiters.length > 0) return undefined
    return this.#take()
  }

  /** A region, once one is free: waits while all are handed out. `signal` withdraws the wait. */
  acquire(options: { signal?: AbortSignal } = {}): Promise<Region> {
    const { signal } = options
    try {
      checkSignal(signal)
      if (signal?.aborted) return Promise.reject(abortError(signal))
      const region = this.tryAcquire()
      if (region !== undefined) return Promise.resolve(region)
    } catch (error) {
      return Promise.reject(error)
    }
    poolsWaiting.add(this.#serve)
    return pending<Region>(
      signal,
      (waiter) => this.#waiters.push(waiter),
      (waiter) => {
        const removed = remove(this.#waiters, waiter)
        if (this.#waiters.length === 0) poolsWaiting.delete(this.#serve)
        return removed
      },
    )
  }

  /**
   * Gives `region` back for the next acquire. It must be one of this pool's regions and
   * be here (`ERR_SHMLINK_REGION_TRANSFERRED` while a peer has it). Do not use it after
   * releasing it: the next acquire hands it out again. A frozen region is closed instead.
   */
  release(region: Region): void {
    if (!(region instanceof Region)) throw invalid('release() takes a Region')
    this.#native.release(nativeOf(region))
    if (region.closed) this.#members.delete(region)
    this.#serveWaiters()
  }

  /** What the pool holds and has done. */
  stats(): PoolStats {
    return this.#native.stats()
  }

  /** Closes the free regions now and the others when they are released; waiting acquires fail. */
  close(): void {
    this.#native.close()
    poolsWaiting.delete(this.#serve)
    const error = Object.assign(new Error('the pool was closed'), { code: 'ERR_SHMLINK_REGION_CLOSED' as const })
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error)
    for (const region of this.#members) if (region.closed) this.#members.delete(region)
  }

  [Symbol.dispose](): void {
    this.close()
  }

  #take(): Region | undefined {
    const native = this.#native.tryAcquire()
    if (native === null) return undefined
    for (const region of this.#members) if (region.closed) this.#members.delete(region)
    const region = arrivedRegion(native.serial, () => native)
    this.#members.add(region)
    return region
  }

  #serveWaiters(): void {
    while (this.#waiters.length > 0) {
      let region: Region | undefined
      try {
        region = this.#take()
      } catch (error) {
        for (const waiter of this.#waiters.splice(0)) waiter.reject(error as Error)
        break
      }
      if (region === undefined) return
      this.#waiters.shift()!.resolve(region)
    }
    poolsWaiting.delete(this.#serve)
  }
}

/** The process-wide limits on what all peers together may make this process map, and their use now. */
export function processStats(): binding.ProcessStats {
  return binding.processStats()
}

/** Sets the process-wide limits (docs/SECURITY.md). */
export function setProcessLimits(limits: { maxMappedBytes: number; maxRegions: number }): void {
  if (typeof limits !== 'object' || limits === null) throw invalid('setProcessLimits takes { maxMappedBytes, maxRegions }')
  binding.setProcessLimits(checkInteger(limits.maxMappedBytes, 'maxMappedBytes', 0), checkInteger(limits.maxRegions, 'maxRegions', 0))
}

/**
 * Spawns `command` with an endpoint connected to it: the child calls
 * {@link Endpoint.inherited} to get its end (`SHMLINK_FD` names its descriptor). Options
 * are those of `child_process.spawn`. Spawn the runtime itself, not a wrapper script
 * (`process.execPath` with `['--import', 'tsx', 'child.ts']`, not `node_modules/.bin/tsx`),
 * since a wrapper starts the real child with descriptors of its own.
 */
export function spawnWithEndpoint(
  command: string,
  args: readonly string[] = [],
  options: SpawnOptions & EndpointOptionsInit = {},
): { child: ChildProcess; endpoint: Endpoint } {
  if (typeof options !== 'object' || options === null) throw invalid('options must be an object')
  const { acceptWritable, limits, ring, busyPollUs, ...spawnOptions } = options
  const [mine, theirs] = binding.NativeEndpoint.pairForChild(endpointOptions({ acceptWritable, limits, ring, busyPollUs }))
  const base: StdioOptions = spawnOptions.stdio ?? 'inherit'
  const stdio = typeof base === 'string' ? [base, base, base] : [...base]
  const index = stdio.length
  stdio.push(theirs.fd)
  try {
    const child = spawn(command, args, {
      ...spawnOptions,
      stdio,
      env: { ...(spawnOptions.env ?? process.env), SHMLINK_FD: String(index) },
    })
    return { child, endpoint: wrapEndpoint(mine) }
  } catch (error) {
    mine.close()
    throw error
  } finally {
    theirs.close()
  }
}
