/**
 * Kernel tasks to a worker thread without an event-loop round trip per task.
 *
 * Each worker runs one long `serve` call (a single Piscina task) that takes tasks from its own
 * MessagePort with `receiveMessageOnPort`, a synchronous read, whenever a shared counter says more
 * were posted, and sleeps in `Atomics.wait` when none are. The main thread posts the task, bumps the
 * counter, and learns of answers through `Atomics.waitAsync` on a second counter, reading them from
 * the port in order. Neither side waits for the other's event loop, and the next task is already
 * at the worker when the last one ends.
 *
 * Why: with one Piscina task per 16 MiB chunk, a worker sat 0.1-0.4 ms between tasks and the main
 * thread spent ~0.1 ms on each, so two workers reached 1.74-1.89x one worker's throughput on the
 * NVFP4 kernel (bench/RESULTS.md, 2026-11-27). Two threads given 32 chunks per message reached
 * 1.98x; through this protocol the median run is 1.89x, with one worker at the inline speed.
 */
import { MessageChannel, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';

/** Int32 fields per worker in the control array; 16 (64 bytes) so two workers' counters never share a cache line. */
const STRIDE = 16;
/** Tasks posted so far (main writes), or STOP, or EXITED. */
const POSTED = 0;
/** Tasks answered so far (worker writes). */
const DONE = 1;
/** Set by the pool: end the serve call. */
const STOP = -1;
/** Set by the worker when its serve call ended after IDLE_MS without a task (or none started yet). */
const EXITED = -2;
/**
 * A serve call ends after this long without a task, so an idle pool does not keep the process
 * alive (Piscina holds it while a task runs); the next task starts a new one (~0.2 ms).
 */
const IDLE_MS = 500;

/** Atomics.waitAsync (V8 8.7+, so every Node >= 16), missing from this TypeScript's library types. */
const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string } }).waitAsync.bind(Atomics);

/** The control array for `workers` mailboxes (no serve call running in any). */
export function mailboxControl(workers: number): Int32Array {
  const ctl = new Int32Array(new SharedArrayBuffer(4 * STRIDE * workers));
  for (let i = 0; i < workers; i++) ctl[i * STRIDE + POSTED] = EXITED;
  return ctl;
}

/** What a worker's serve call receives. */
export interface ServeArgs {
  ctl: Int32Array;
  index: number;
  port: MessagePort;
}

type Answer = { result: unknown } | { error: unknown };

/**
 * Worker side: runs `handle` on each task posted to this mailbox, in order, answering each on the
 * port, until the pool sets STOP or IDLE_MS pass without a task. Returns how many tasks were answered.
 */
export function serve({ ctl, index, port }: ServeArgs, handle: (task: unknown) => unknown): number {
  const posted = index * STRIDE + POSTED, done = index * STRIDE + DONE;
  let count = Atomics.load(ctl, done); // a new serve call continues the count
  for (;;) {
    const n = Atomics.load(ctl, posted);
    if (n === STOP) return count;
    if (n === count) {
      // idle: end the call, unless a task is posted at this very moment (the exchange then fails)
      if (Atomics.wait(ctl, posted, n, IDLE_MS) === 'timed-out' && Atomics.compareExchange(ctl, posted, n, EXITED) === n) return count;
      continue;
    }
    // the main thread posts the message before it moves the count, so it is here
    const msg = receiveMessageOnPort(port);
    let answer: Answer;
    if (!msg) answer = { error: new Error('internal: kernel mailbox count ahead of its messages') };
    else {
      try {
        answer = { result: handle(msg.message) };
      } catch (error) {
        answer = { error };
      }
    }
    port.postMessage(answer);
    Atomics.store(ctl, done, ++count);
    Atomics.notify(ctl, done);
  }
}

/** Main side of one worker's mailbox; `launch` starts a serve call in a worker (a Piscina task). */
export class Mailbox {
  private posted = 0;
  private answered = 0;
  private waiters: { resolve: (r: unknown) => void; reject: (e: unknown) => void }[] = [];
  private port: MessagePort | undefined;
  private failure: unknown;
  private stopped = false;
  /** The current serve call (resolved once it ends). */
  serving: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly ctl: Int32Array,
    private readonly index: number,
    private readonly launch: (args: ServeArgs, transfer: MessagePort[]) => Promise<unknown>,
  ) {
    void this.collect();
  }

  /** Tasks posted and not yet answered. */
  get outstanding(): number {
    return this.posted - this.answered;
  }

  /** False once stopped, or once a serve call failed (the worker is gone). */
  get alive(): boolean {
    return this.failure === undefined && !this.stopped;
  }

  post<R>(task: unknown): Promise<R> {
    if (!this.alive) return Promise.reject(this.failure ?? new Error('internal: kernel mailbox is closed'));
    const at = this.index * STRIDE + POSTED;
    // the message first: if it cannot be cloned, this throws before anything has changed
    let running = false;
    if (this.port) {
      this.port.postMessage(task);
      running = Atomics.compareExchange(this.ctl, at, this.posted, this.posted + 1) === this.posted;
    }
    if (!running) {
      // no serve call running (it ended while idle, or none started): the last one ended with every
      // task answered, so take those answers, then start one on a new channel
      this.drain();
      const { port1, port2 } = new MessageChannel();
      this.port?.close();
      this.port = port1;
      port1.postMessage(task);
      Atomics.store(this.ctl, at, this.posted + 1);
      const served = this.launch({ ctl: this.ctl, index: this.index, port: port2 }, [port2]);
      served.catch((e: unknown) => this.fail(e));
      this.serving = served.catch(() => undefined);
    }
    // answers are read on this thread, so none can arrive before its waiter is in the queue
    const answer = new Promise<R>((resolve, reject) => this.waiters.push({ resolve: resolve as (r: unknown) => void, reject }));
    this.posted++;
    Atomics.notify(this.ctl, at);
    return answer;
  }

  /** Answers, in order, every task the worker's count says is done. */
  private drain(): void {
    const done = Atomics.load(this.ctl, this.index * STRIDE + DONE);
    while (this.answered < done) {
      const msg = this.port && receiveMessageOnPort(this.port);
      const waiter = this.waiters.shift();
      this.answered++;
      if (!msg || !waiter) {
        this.fail(new Error('internal: kernel mailbox answers out of step with its tasks'));
        return;
      }
      const a = msg.message as Answer;
      if ('error' in a) waiter.reject(a.error);
      else waiter.resolve(a.result);
    }
  }

  /** Answers tasks as the worker's count moves, until stopped. */
  private async collect(): Promise<void> {
    const at = this.index * STRIDE + DONE;
    while (!this.stopped) {
      const w = waitAsync(this.ctl, at, this.answered);
      if (w.async) await w.value;
      this.drain();
    }
  }

  /** Ends the serve call (call once every task is answered) and the collector. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    Atomics.store(this.ctl, this.index * STRIDE + POSTED, STOP);
    Atomics.notify(this.ctl, this.index * STRIDE + POSTED);
    Atomics.notify(this.ctl, this.index * STRIDE + DONE); // wakes the collector so it can end
    this.port?.close();
  }

  /** The worker is gone: every waiting task fails with `error`, and so does every later one. */
  fail(error: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    for (const w of this.waiters.splice(0)) w.reject(error);
  }
}
