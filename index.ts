/**
 * shmlink: zero-copy IPC for Node.js. Shared-memory regions are handed to other
 * processes over UNIX sockets with small messages; the receiving side maps the same
 * memory instead of receiving a copy.
 *
 * Sending is a release and receiving an acquire (docs/MEMORY-MODEL.md): what one side
 * wrote to a region before `send()` is what the other side reads after `recv()`.
 * @packageDocumentation
 */
import { EventEmitter } from 'node:events'
import { spawn, type ChildProcess, type SpawnOptions, type StdioOptions } from 'node:child_process'
import { debuglog } from 'node:util'

import * as binding from './binding'
import type { NativeEndpoint, NativeListener, NativeRegion } from './binding'

const debug = debuglog('shmlink')
/** Checked before each hot-path `debug()` call, which would otherwise gather its arguments every time. */
const debugging = debug.enabled

/** Every `code` a shmlink error can carry; `docs/ERRORS.md` says what to do about each. */
export type ErrorCode =
  | 'ERR_SHMLINK_CLOSED'
  | 'ERR_SHMLINK_PEER_CLOSED'
  | 'ERR_SHMLINK_WOULD_BLOCK'
  | 'ERR_SHMLINK_TIMED_OUT'
  | 'ERR_SHMLINK_PROTOCOL_VIOLATION'
  | 'ERR_SHMLINK_PEER_INCOMPATIBLE'
  | 'ERR_SHMLINK_REGION_UNSEALED'
  | 'ERR_SHMLINK_REGION_SIZE_MISMATCH'
  | 'ERR_SHMLINK_REGION_NOT_MEMFD'
  | 'ERR_SHMLINK_REGION_TRANSFERRED'
  | 'ERR_SHMLINK_REGION_FROZEN'
  | 'ERR_SHMLINK_REGION_BUSY'
  | 'ERR_SHMLINK_REGION_CLOSED'
  | 'ERR_SHMLINK_TOO_MANY_REGIONS'
  | 'ERR_SHMLINK_PAYLOAD_TOO_LARGE'
  | 'ERR_SHMLINK_FDS_TRUNCATED'
  | 'ERR_SHMLINK_INVALID_ARG'
  | 'ERR_SHMLINK_ZERO_COPY_UNAVAILABLE'
  | 'ERR_SHMLINK_BINARY_NOT_FOUND'
  | 'ERR_SHMLINK_UNSUPPORTED'
  | 'ERR_SHMLINK_OS'

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

function shmlinkError(
  code: ErrorCode,
  message: string,
  Kind: ErrorConstructor | TypeErrorConstructor | RangeErrorConstructor = Error,
): ShmlinkError {
  const error = new Kind(message) as ShmlinkError
  error.code = code
  return error
}

function abortError(signal: AbortSignal): Error {
  const error = new Error('The operation was aborted', { cause: signal.reason }) as Error & { code: string }
  error.name = 'AbortError'
  error.code = 'ABORT_ERR'
  return error
}

function checkSignal(signal: AbortSignal | undefined): void {
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw shmlinkError('ERR_SHMLINK_INVALID_ARG', 'options.signal must be an AbortSignal', TypeError)
  }
}

function checkTimeout(timeoutMs: number | undefined): number {
  if (timeoutMs === undefined) return -1
  if (typeof timeoutMs !== 'number' || Number.isNaN(timeoutMs) || timeoutMs < 0) {
    throw shmlinkError('ERR_SHMLINK_INVALID_ARG', 'options.timeoutMs must be a non-negative number', RangeError)
  }
  return timeoutMs
}

function checkInteger(value: unknown, name: string, min: number): number {
  if (typeof value !== 'number') {
    throw shmlinkError('ERR_SHMLINK_INVALID_ARG', `${name} must be a number, not ${typeof value}`, TypeError)
  }
  if (!Number.isSafeInteger(value) || value < min) {
    throw shmlinkError('ERR_SHMLINK_INVALID_ARG', `${name} must be an integer >= ${min}, not ${value}`, RangeError)
  }
  return value
}

/** Bytes as the binding takes them: a Buffer over the same memory, never a copy. */
function toBytes(data: unknown, name: string): Buffer {
  if (typeof data === 'string') return Buffer.from(data, 'utf8')
  if (Buffer.isBuffer(data)) return data
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  if (data instanceof ArrayBuffer || data instanceof SharedArrayBuffer) return Buffer.from(data)
  throw shmlinkError(
    'ERR_SHMLINK_INVALID_ARG',
    `${name} must be a string, Buffer, TypedArray, DataView or ArrayBuffer`,
    TypeError,
  )
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

/** Live `Region` objects by the serial of their memory, so that a region that comes back is the same object. */
const regionsBySerial = new Map<number, WeakRef<Region>>()
const forgetRegion = new FinalizationRegistry<number>((serial) => {
  if (regionsBySerial.get(serial)?.deref() === undefined) regionsBySerial.delete(serial)
})

/**
 * A block of shared memory: an anonymous, size-sealed memory file that can be handed to
 * other processes. Nothing appears in `/dev/shm`, so a crash leaves nothing behind.
 */
export class Region implements Disposable {
  #native: NativeRegion | undefined
  #buffer: ArrayBuffer | undefined
  #view: Uint8Array | undefined
  /** Set from the moment a transfer is requested until the region comes back. */
  #handedOver = false
  /** Endpoints this region was sent on: closing it tells their peers to let go. */
  readonly #sentOn = new Set<Endpoint>()

  private constructor(native: NativeRegion) {
    this.#native = native
  }

  /** A new, zero-filled region of `size` bytes. */
  static create(size: number): Region {
    checkInteger(size, 'size', 1)
    const region = new Region(binding.NativeRegion.create(size))
    region.#remember()
    return region
  }

  /**
   * @internal The `Region` for the region with `serial` that arrived in a message: the
   * live object this process already has for it, or a new one over the handle `take` gives.
   */
  static _arrived(serial: number, take: () => NativeRegion): Region {
    const existing = regionsBySerial.get(serial)?.deref()
    if (existing !== undefined && !existing.closed) {
      existing.#handedOver = false
      return existing
    }
    const region = new Region(take())
    region.#remember()
    return region
  }

  #remember(): void {
    const serial = this.#native!.serial
    regionsBySerial.set(serial, new WeakRef(this))
    forgetRegion.register(this, serial)
  }

  #live(): NativeRegion {
    if (this.#native === undefined) {
      throw shmlinkError('ERR_SHMLINK_REGION_CLOSED', 'the region is closed; create a new one with Region.create()')
    }
    return this.#native
  }

  /** Size in bytes (0 once closed). */
  get size(): number {
    return this.#native?.size ?? 0
  }

  /** Whether `freeze()` made the contents immutable for every process. */
  get frozen(): boolean {
    return this.#native?.frozen ?? false
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#native === undefined
  }

  /** Whether the region was transferred to a peer and has not come back yet. */
  get transferred(): boolean {
    return this.#handedOver || (this.#native?.transferred ?? false)
  }

  /** Whether `bytes` is available (see {@link zeroCopy}). */
  get zeroCopy(): boolean {
    return zeroCopy()
  }

  /**
   * The region's memory as a `Uint8Array`, without copying. The same view is returned
   * until the region is closed or transferred; those detach it, after which old views
   * have length 0. Writes to a frozen region's view change a private copy only.
   */
  get bytes(): Uint8Array {
    const native = this.#live()
    if (!zeroCopy()) {
      throw shmlinkError(
        'ERR_SHMLINK_ZERO_COPY_UNAVAILABLE',
        'this runtime refuses external buffers (Electron memory cage or SHMLINK_FORCE_COPY=1); use region.read() and region.write()',
      )
    }
    if (this.transferred) {
      throw shmlinkError(
        'ERR_SHMLINK_REGION_TRANSFERRED',
        'the region was transferred to a peer; wait until the peer sends it back',
      )
    }
    if (this.#view === undefined || this.#view.byteLength !== this.size) {
      this.#buffer = native.expose() as ArrayBuffer
      this.#view = new Uint8Array(this.#buffer)
    }
    return this.#view
  }

  /** Copies `length` bytes starting at `offset` out of the region. */
  read(offset = 0, length?: number): Buffer {
    const native = this.#live()
    checkInteger(offset, 'offset', 0)
    const count = length === undefined ? Math.max(0, native.size - offset) : checkInteger(length, 'length', 0)
    return native.read(offset, count)
  }

  /** Copies `data` into the region starting at `offset`. */
  write(offset: number, data: string | ArrayBufferView | ArrayBuffer): void {
    const native = this.#live()
    checkInteger(offset, 'offset', 0)
    native.write(offset, toBytes(data, 'data'))
  }

  /**
   * Makes the contents immutable for every process (`F_SEAL_WRITE`). Freeze before
   * sharing: it fails with `ERR_SHMLINK_REGION_BUSY` while a peer maps the region writable.
   */
  freeze(): this {
    this.#live().freeze()
    return this
  }

  /**
   * Lets go of the region: `bytes` views are detached, peers it was sent to are told
   * they may unmap it. The memory itself is freed when nobody maps it any more.
   */
  close(): void {
    const native = this.#native
    if (native === undefined) return
    for (const endpoint of this.#sentOn) endpoint._forget(this, native)
    this.#sentOn.clear()
    this.#detach()
    this.#native = undefined
    native.close()
  }

  [Symbol.dispose](): void {
    this.close()
  }

  #detach(): void {
    if (this.#buffer !== undefined) {
      this.#native!.detach(this.#buffer)
      this.#buffer = undefined
      this.#view = undefined
    }
  }

  /** @internal The native handle, checked for use in a send. */
  _forSend(endpoint: Endpoint, transfer: boolean): NativeRegion {
    const native = this.#live()
    if (this.transferred) {
      throw shmlinkError(
        'ERR_SHMLINK_REGION_TRANSFERRED',
        'a region was already transferred; only its current owner may send it',
      )
    }
    if (!this.#sentOn.has(endpoint)) {
      this.#sentOn.add(endpoint)
      endpoint._sent(this)
    }
    if (transfer) {
      this.#handedOver = true
      this.#detach()
    }
    return native
  }

  /** @internal A transfer that never left (its send failed or was aborted). */
  _transferFailed(): void {
    if (!(this.#native?.transferred ?? false)) this.#handedOver = false
  }

  /** @internal An endpoint that ended no longer needs telling. */
  _unlink(endpoint: Endpoint): void {
    this.#sentOn.delete(endpoint)
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
  /**
   * Regions to attach, in the order the peer receives them. Shared regions stay
   * accessible on both sides, which agree who writes when.
   */
  regions?: readonly Region[]
  /**
   * Regions to hand over: they are detached here until the peer sends them back. A region
   * also in `regions` keeps its place there; the others are attached after `regions`.
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
  /** How long to wait; forever when absent, 0 to take only what is already there. */
  timeoutMs?: number
}

/** Who is at the other end of a connection, as the kernel recorded it (`SO_PEERCRED`). */
export interface PeerCredentials {
  pid: number
  uid: number
  gid: number
}

const EVENT_MESSAGE = 0
const EVENT_WRITABLE = 1
const EVENT_FAILURE = 2
const EVENT_CONNECTION = 3
const EVENT_HANDSHAKE = 4
const FLAG_NEW = 1
const FLAG_FROZEN = 2
const FLAG_TRANSFER = 4

/** Messages received before anyone asked for them; beyond this the socket fills up and the sender waits. */
const HIGH_WATER_MARK = 256

interface Waiter<T> {
  resolve(value: T): void
  reject(error: Error): void
}

/** A send with nothing attached shares these (never written to). */
const NONE: never[] = []
const noop = (): void => {}
/** What `send()` returns when the message left at once. */
const SENT = Promise.resolve()

interface PendingSend {
  payload: Buffer
  natives: NativeRegion[]
  transferFlags: boolean[]
  regions: Region[]
  resolve(): void
  reject(error: Error): void
  signal?: AbortSignal
  onAbort?: () => void
}

/**
 * A received message. `flat` holds `[id, flags, serial]` per region; the binding hands out
 * a handle (`takeRegion`) only for a region this process holds no live `Region` for.
 */
function toMessage(native: NativeEndpoint, payload: Buffer, flat: number[] | undefined): Message {
  if (flat === undefined) return { payload, regions: [], descriptors: [] }
  const regions: Region[] = []
  const descriptors: Descriptor[] = []
  for (let i = 0; i < flat.length; i += 3) {
    const index = i / 3
    regions.push(Region._arrived(flat[i + 2], () => native.takeRegion(index)))
    const flags = flat[i + 1]
    descriptors.push({
      id: flat[i],
      new: (flags & FLAG_NEW) !== 0,
      frozen: (flags & FLAG_FROZEN) !== 0,
      transferred: (flags & FLAG_TRANSFER) !== 0,
    })
  }
  return { payload, regions, descriptors }
}

/**
 * One end of a connection. Sending is non-blocking with backpressure (a full socket makes
 * `send()` wait, never drop or reorder); receiving runs on the event loop.
 *
 * Emits `'close'` once, with the error that ended the connection (`ERR_SHMLINK_PEER_CLOSED`
 * when the peer closed it) or with no argument after `close()`.
 */
export class Endpoint extends EventEmitter implements AsyncIterable<Message>, Disposable {
  #native: NativeEndpoint | undefined
  #referenced = true
  #reading = true
  /** What the native handle was last told, so unchanged states cost no call. */
  #interest = -1
  #handleReferenced: boolean | undefined
  readonly #inbox: Message[] = []
  readonly #waiters: Waiter<Message>[] = []
  readonly #outbox: PendingSend[] = []
  readonly #handshakeWaiters: Waiter<void>[] = []
  /** Regions sent here that are still open; each holds this endpoint until one of them closes. */
  readonly #regionsSent = new Set<Region>()
  /** Why the connection ended, once it has. */
  #ended: ShmlinkError | undefined

  private constructor(native: NativeEndpoint) {
    super()
    this.#native = native
  }

  /** @internal */
  static _wrap(native: NativeEndpoint): Endpoint {
    const endpoint = new Endpoint(native)
    endpoint.#watch()
    return endpoint
  }

  /** A connected pair of endpoints, for worker threads or a process you spawn yourself. */
  static pair(): [Endpoint, Endpoint] {
    const [a, b] = binding.NativeEndpoint.pair()
    return [Endpoint._wrap(a), Endpoint._wrap(b)]
  }

  /**
   * Connects to an {@link Endpoint.listen} server at `path` (a path starting with a NUL
   * byte is a Linux abstract name) and resolves once the handshake has succeeded.
   */
  static async connect(path: string, options: RecvOptions = {}): Promise<Endpoint> {
    if (typeof path !== 'string') throw shmlinkError('ERR_SHMLINK_INVALID_ARG', 'path must be a string', TypeError)
    checkSignal(options.signal)
    const endpoint = Endpoint._wrap(binding.NativeEndpoint.connect(path))
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
  static fromFd(fd: number): Endpoint {
    checkInteger(fd, 'fd', 0)
    return Endpoint._wrap(binding.NativeEndpoint.fromFd(fd))
  }

  /** In a process started by {@link spawnWithEndpoint}: the endpoint its parent passed down. */
  static inherited(): Endpoint {
    const fd = Number(process.env.SHMLINK_FD)
    if (!Number.isSafeInteger(fd) || fd < 3) {
      throw shmlinkError(
        'ERR_SHMLINK_INVALID_ARG',
        'SHMLINK_FD is not set: this process was not started by spawnWithEndpoint()',
      )
    }
    delete process.env.SHMLINK_FD
    return Endpoint.fromFd(fd)
  }

  /** Listens at `path`; the server is an async iterable of accepted endpoints. */
  static listen(path: string): Server {
    if (typeof path !== 'string') throw shmlinkError('ERR_SHMLINK_INVALID_ARG', 'path must be a string', TypeError)
    return new Server(binding.NativeListener.bind(path))
  }

  /** The socket's file descriptor (-1 once closed). */
  get fd(): number {
    return this.#native?.fd ?? -1
  }

  /** Whether the connection is over (closed here, by the peer, or after an error). */
  get closed(): boolean {
    return this.#native === undefined
  }

  /** The peer's process, user and group ids (for a socketpair: those of its creator). */
  get peer(): PeerCredentials {
    return this.#live().peer() as PeerCredentials
  }

  #live(): NativeEndpoint {
    if (this.#native === undefined) {
      throw this.#ended ?? shmlinkError('ERR_SHMLINK_CLOSED', 'the endpoint is closed; create or accept a new one')
    }
    return this.#native
  }

  #watch(): void {
    const native = this.#native!
    native.watch(this.#onEvent, this)
    this.#updateInterest()
    this.#updateRef()
  }

  readonly #onEvent = (kind: number, a?: unknown, b?: unknown): boolean => {
    switch (kind) {
      case EVENT_MESSAGE:
        return this.#deliver(toMessage(this.#native!, a as Buffer, b as number[] | undefined))
      case EVENT_WRITABLE:
      case EVENT_HANDSHAKE:
        if (kind === EVENT_HANDSHAKE) this.#settleHandshake()
        this.#flush()
        return true
      case EVENT_FAILURE:
        this.#end(a as ShmlinkError)
        return false
      default:
        return false
    }
  }

  /**
   * Hands a message to a waiting `recv()` or queues it. Returns whether another `recv()`
   * is already waiting, so the binding reads on at once only when that helps.
   */
  #deliver(message: Message): boolean {
    if (debugging) debug('recv %d bytes, %d regions', message.payload.length, message.regions.length)
    const waiter = this.#waiters.shift()
    if (waiter !== undefined) {
      waiter.resolve(message)
    } else {
      this.#inbox.push(message)
      if (this.#inbox.length >= HIGH_WATER_MARK) {
        this.#reading = false
        this.#updateInterest()
      }
    }
    this.#updateRef()
    return this.#waiters.length > 0
  }

  #settleHandshake(): void {
    for (const waiter of this.#handshakeWaiters.splice(0)) waiter.resolve()
  }

  #handshake(signal?: AbortSignal): Promise<void> {
    if (this.#native?.handshakeComplete) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      if (this.#ended !== undefined) return reject(this.#ended)
      const waiter: Waiter<void> = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort)
          resolve()
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort)
          reject(error)
        },
      }
      const onAbort = () => {
        this.#handshakeWaiters.splice(this.#handshakeWaiters.indexOf(waiter), 1)
        reject(abortError(signal!))
      }
      if (signal?.aborted) return reject(abortError(signal))
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#handshakeWaiters.push(waiter)
      this.#updateRef()
    })
  }

  /** Resumes reading once the queue has drained below half the high-water mark. */
  #updateInterest(): void {
    if (!this.#reading && this.#inbox.length < HIGH_WATER_MARK / 2) this.#reading = true
    const writing = this.#outbox.length > 0 && this.#native !== undefined && this.#native.handshakeComplete
    const interest = (this.#reading ? 1 : 0) | (writing ? 2 : 0)
    if (interest !== this.#interest && this.#native !== undefined) {
      this.#interest = interest
      this.#native.setInterest(this.#reading, writing)
    }
  }

  /** The handle keeps the process alive only while something here waits for the peer. */
  #updateRef(): void {
    const waiting = this.#waiters.length > 0 || this.#outbox.length > 0 || this.#handshakeWaiters.length > 0
    const referenced = this.#referenced && waiting
    if (referenced !== this.#handleReferenced && this.#native !== undefined) {
      this.#handleReferenced = referenced
      this.#native.setRef(referenced)
    }
  }

  /**
   * Sends `payload` with regions attached. Resolves once the message is in the socket;
   * waits while the socket is full.
   */
  send(payload: string | ArrayBufferView | ArrayBuffer, options: SendOptions = {}): Promise<void> {
    let pending: PendingSend
    try {
      checkSignal(options.signal)
      if (options.signal?.aborted) return Promise.reject(abortError(options.signal))
      pending = this.#prepare(payload, options)
    } catch (error) {
      return Promise.reject(error)
    }
    if (this.#outbox.length === 0) {
      let sent: boolean
      try {
        sent = this.#nativeSend(this.#live(), pending)
      } catch (error) {
        this.#failSend(pending, error as Error)
        return Promise.reject(error)
      }
      if (sent) {
        if (debugging) debug('send %d bytes, %d regions', pending.payload.length, pending.natives.length)
        return SENT
      }
    }
    return new Promise<void>((resolve, reject) => {
      pending.resolve = resolve
      pending.reject = reject
      this.#enqueue(pending, options.signal)
    })
  }

  #prepare(payload: string | ArrayBufferView | ArrayBuffer, options: SendSyncOptions): PendingSend {
    this.#live()
    const bytes = toBytes(payload, 'payload')
    const shared = options.regions ?? NONE
    const transferred = options.transfer ?? NONE
    if (!Array.isArray(shared) || !Array.isArray(transferred)) {
      throw shmlinkError('ERR_SHMLINK_INVALID_ARG', 'options.regions and options.transfer must be arrays', TypeError)
    }
    if (shared.length === 0 && transferred.length === 0) {
      return { payload: bytes, natives: NONE, transferFlags: NONE, regions: NONE, resolve: noop, reject: noop }
    }
    // Attachments keep the order of `regions`; a region listed in `transfer` too is
    // transferred in its place, the others in `transfer` follow (as with postMessage's
    // transfer list).
    const regions = [...shared, ...transferred.filter((region) => !shared.includes(region))]
    for (const region of regions) {
      if (!(region instanceof Region)) {
        throw shmlinkError('ERR_SHMLINK_INVALID_ARG', 'options.regions and options.transfer hold Regions only', TypeError)
      }
      if (region.closed) {
        throw shmlinkError('ERR_SHMLINK_REGION_CLOSED', 'a closed region cannot be sent; create a new one')
      }
    }
    const transferFlags = regions.map((region) => transferred.includes(region))
    if (transferFlags.some((transfer, i) => transfer && regions.indexOf(regions[i]) !== i)) {
      throw shmlinkError('ERR_SHMLINK_INVALID_ARG', 'a transferred region can be attached only once')
    }
    const natives = regions.map((region, i) => region._forSend(this, transferFlags[i]))
    return { payload: bytes, natives, transferFlags, regions, resolve: noop, reject: noop }
  }

  /** Sends without waiting; false when the socket is full. Regions travel only if there are any. */
  #nativeSend(native: NativeEndpoint, pending: PendingSend): boolean {
    return pending.natives.length === 0
      ? native.send(pending.payload)
      : native.send(pending.payload, pending.natives, pending.transferFlags)
  }

  /** Tries to send now; true when the message left (or failed for good). */
  #trySend(pending: PendingSend): boolean {
    try {
      if (!this.#nativeSend(this.#live(), pending)) return false
    } catch (error) {
      this.#failSend(pending, error as Error)
      return true
    }
    if (debugging) debug('send %d bytes, %d regions', pending.payload.length, pending.natives.length)
    pending.signal?.removeEventListener('abort', pending.onAbort!)
    pending.resolve()
    return true
  }

  #failSend(pending: PendingSend, error: Error): void {
    pending.signal?.removeEventListener('abort', pending.onAbort!)
    for (let i = 0; i < pending.regions.length; i++) {
      if (pending.transferFlags[i]) pending.regions[i]._transferFailed()
    }
    pending.reject(error)
  }

  #enqueue(pending: PendingSend, signal: AbortSignal | undefined): void {
    if (signal !== undefined) {
      pending.signal = signal
      pending.onAbort = () => {
        const index = this.#outbox.indexOf(pending)
        if (index >= 0) {
          this.#outbox.splice(index, 1)
          this.#failSend(pending, abortError(signal))
          this.#updateInterest()
          this.#updateRef()
        }
      }
      signal.addEventListener('abort', pending.onAbort, { once: true })
    }
    this.#outbox.push(pending)
    this.#updateInterest()
    this.#updateRef()
  }

  #flush(): void {
    while (this.#outbox.length > 0 && this.#native !== undefined) {
      if (!this.#trySend(this.#outbox[0])) break
      this.#outbox.shift()
    }
    if (this.#native?.hasPendingOutput) this.#native.flush()
    this.#updateInterest()
    this.#updateRef()
  }

  /** Sends, blocking the thread until there is room (or `timeoutMs` passes). */
  sendSync(payload: string | ArrayBufferView | ArrayBuffer, options: SendSyncOptions = {}): void {
    const timeoutMs = checkTimeout(options.timeoutMs)
    const pending = this.#prepare(payload, options)
    const native = this.#live()
    try {
      for (const queued of this.#outbox.splice(0)) {
        native.sendSync(queued.payload, timeoutMs, queued.natives, queued.transferFlags)
        queued.resolve()
      }
      if (pending.natives.length === 0) native.sendSync(pending.payload, timeoutMs)
      else native.sendSync(pending.payload, timeoutMs, pending.natives, pending.transferFlags)
    } catch (error) {
      this.#failSend(pending, error as Error)
      throw this.#observe(error as ShmlinkError)
    } finally {
      this.#updateInterest()
      this.#updateRef()
    }
  }

  /** Resolves with the next message. */
  recv(options: RecvOptions = {}): Promise<Message> {
    try {
      checkSignal(options.signal)
    } catch (error) {
      return Promise.reject(error)
    }
    const { signal } = options
    if (signal?.aborted) return Promise.reject(abortError(signal))
    const queued = this.#inbox.shift()
    if (queued !== undefined) {
      this.#updateInterest()
      return Promise.resolve(queued)
    }
    if (this.#native === undefined) {
      return Promise.reject(this.#ended ?? shmlinkError('ERR_SHMLINK_CLOSED', 'the endpoint is closed'))
    }
    if (signal === undefined) {
      return new Promise<Message>((resolve, reject) => {
        this.#waiters.push({ resolve, reject })
        this.#updateRef()
      })
    }
    return new Promise<Message>((resolve, reject) => {
      const onAbort = () => {
        const index = this.#waiters.indexOf(waiter)
        if (index >= 0) this.#waiters.splice(index, 1)
        this.#updateRef()
        reject(abortError(signal))
      }
      const waiter: Waiter<Message> = {
        resolve: (message) => {
          signal.removeEventListener('abort', onAbort)
          resolve(message)
        },
        reject: (error) => {
          signal.removeEventListener('abort', onAbort)
          reject(error)
        },
      }
      signal.addEventListener('abort', onAbort, { once: true })
      this.#waiters.push(waiter)
      this.#updateRef()
    })
  }

  /** Receives the next message, blocking the thread (for CLIs and worker threads). */
  recvSync(options: RecvSyncOptions = {}): Message {
    const timeoutMs = checkTimeout(options.timeoutMs)
    const queued = this.#inbox.shift()
    if (queued !== undefined) {
      this.#updateInterest()
      return queued
    }
    const native = this.#live()
    try {
      const received = native.recvSync(timeoutMs)
      if (Buffer.isBuffer(received)) return { payload: received, regions: [], descriptors: [] }
      const [payload, descriptors] = received as [Buffer, number[]]
      return toMessage(native, payload, descriptors)
    } catch (error) {
      throw this.#observe(error as ShmlinkError)
    }
  }

  /** Ends this endpoint too when the error of a synchronous call ended the connection. */
  #observe(error: ShmlinkError): ShmlinkError {
    if (this.#native !== undefined && !this.#native.open) this.#end(error)
    return error
  }

  /** Messages until the connection ends; ends quietly when either side closes it. */
  [Symbol.asyncIterator](): AsyncIterator<Message> {
    const finished = (error: ShmlinkError): IteratorResult<Message> => {
      if (error.code === 'ERR_SHMLINK_PEER_CLOSED' || error.code === 'ERR_SHMLINK_CLOSED') {
        return { value: undefined, done: true }
      }
      throw error
    }
    return {
      next: () => this.recv().then((value) => ({ value, done: false }), finished),
      return: () => Promise.resolve({ value: undefined, done: true }),
    }
  }

  /** @internal `region` was sent here: it tells this endpoint when it closes. */
  _sent(region: Region): void {
    this.#regionsSent.add(region)
  }

  /** @internal Tells the peer this side will not refer to `region` again. */
  _forget(region: Region, native: NativeRegion): void {
    this.#regionsSent.delete(region)
    try {
      this.#native?.release(native)
    } catch (error) {
      debug('release failed: %s', (error as Error).message)
    }
  }

  /** Closes the connection: the peer sees it end; waiting calls reject with `ERR_SHMLINK_CLOSED`. */
  close(): void {
    if (this.#native === undefined) return
    this.#finish(shmlinkError('ERR_SHMLINK_CLOSED', 'the endpoint was closed'), undefined)
  }

  #end(error: ShmlinkError): void {
    if (this.#native === undefined) return
    debug('connection ended: %s', error.message)
    this.#ended = error
    this.#finish(error, error)
  }

  #finish(error: ShmlinkError, reason: ShmlinkError | undefined): void {
    const native = this.#native!
    this.#native = undefined
    native.close()
    for (const region of this.#regionsSent) region._unlink(this)
    this.#regionsSent.clear()
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error)
    for (const waiter of this.#handshakeWaiters.splice(0)) waiter.reject(error)
    for (const pending of this.#outbox.splice(0)) this.#failSend(pending, error)
    process.nextTick(() => this.emit('close', reason))
  }

  /** Lets the process exit even while this endpoint waits for messages. */
  unref(): this {
    this.#referenced = false
    this.#updateRef()
    return this
  }

  /** Undoes {@link Endpoint.unref}. */
  ref(): this {
    this.#referenced = true
    this.#updateRef()
    return this
  }

  [Symbol.dispose](): void {
    this.close()
  }
}

/** A listening socket; iterate it (or listen for `'connection'`) to accept endpoints. */
export class Server extends EventEmitter implements AsyncIterable<Endpoint>, Disposable {
  #native: NativeListener | undefined
  readonly #path: string
  readonly #pending: Endpoint[] = []
  readonly #waiters: Waiter<IteratorResult<Endpoint>>[] = []
  #referenced = true

  /** @internal */
  constructor(native: NativeListener) {
    super()
    this.#native = native
    this.#path = native.path
    native.watch(this.#onEvent, this)
    this.#updateRef()
  }

  /** The path it listens at. */
  get path(): string {
    return this.#path
  }

  readonly #onEvent = (kind: number, value?: unknown): boolean => {
    if (kind === EVENT_CONNECTION) {
      const endpoint = Endpoint._wrap(value as NativeEndpoint)
      const waiter = this.#waiters.shift()
      if (waiter !== undefined) waiter.resolve({ value: endpoint, done: false })
      else if (this.listenerCount('connection') > 0) this.emit('connection', endpoint)
      else this.#pending.push(endpoint)
      this.#updateRef()
    } else if (kind === EVENT_FAILURE) {
      this.emit('error', value)
    }
    return true
  }

  #updateRef(): void {
    const waiting = this.#waiters.length > 0 || this.listenerCount('connection') > 0
    this.#native?.setRef(this.#referenced && waiting)
  }

  override on(event: string | symbol, listener: (...args: any[]) => void): this {
    super.on(event, listener)
    if (event === 'connection') this.#updateRef()
    return this
  }

  /** Resolves with the next accepted connection. */
  accept(): Promise<Endpoint> {
    const next = this.#pending.shift()
    if (next !== undefined) return Promise.resolve(next)
    if (this.#native === undefined) return Promise.reject(shmlinkError('ERR_SHMLINK_CLOSED', 'the server is closed'))
    return new Promise<Endpoint>((resolve, reject) => {
      this.#waiters.push({
        resolve: (result) => (result.done ? reject(shmlinkError('ERR_SHMLINK_CLOSED', 'the server is closed')) : resolve(result.value)),
        reject,
      })
      this.#updateRef()
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
    for (const waiter of this.#waiters.splice(0)) waiter.resolve({ value: undefined, done: true })
    for (const endpoint of this.#pending.splice(0)) endpoint.close()
    process.nextTick(() => this.emit('close'))
  }

  unref(): this {
    this.#referenced = false
    this.#updateRef()
    return this
  }

  ref(): this {
    this.#referenced = true
    this.#updateRef()
    return this
  }

  [Symbol.dispose](): void {
    this.close()
  }
}

/**
 * Spawns `command` with an endpoint connected to it: the child calls
 * {@link Endpoint.inherited} to get its end. Options are those of `child_process.spawn`.
 */
export function spawnWithEndpoint(
  command: string,
  args: readonly string[] = [],
  options: SpawnOptions = {},
): { child: ChildProcess; endpoint: Endpoint } {
  const [mine, theirs] = binding.NativeEndpoint.pairForChild()
  const base: StdioOptions = options.stdio ?? 'inherit'
  const stdio = typeof base === 'string' ? [base, base, base] : [...base]
  const index = stdio.length
  stdio.push(theirs.fd)
  try {
    const child = spawn(command, args, {
      ...options,
      stdio,
      env: { ...(options.env ?? process.env), SHMLINK_FD: String(index) },
    })
    return { child, endpoint: Endpoint._wrap(mine) }
  } catch (error) {
    mine.close()
    throw error
  } finally {
    theirs.close()
  }
}
