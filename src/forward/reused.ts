/**
 * Buffers kept from one call of a function to the next, so that a forward pass over many samples
 * does not leave each sample's intermediates (~100 MB at 8B) to the garbage collector, which frees
 * them late. The next call overwrites what the previous one returned: read it before calling again.
 * A call that starts while another is still running gets buffers of its own, so overlapping calls
 * (Promise.all over samples) stay correct.
 */
export class ReusedBuffers<B> {
  private kept: B | undefined;
  private keptKey = '';
  private busy = false;

  constructor(private readonly make: (key: string) => B) {}

  async use<R>(key: string, fn: (buffers: B) => Promise<R>): Promise<R> {
    if (this.busy) return fn(this.make(key));
    this.busy = true;
    try {
      if (this.kept === undefined || this.keptKey !== key) {
        this.kept = this.make(key);
        this.keptKey = key;
      }
      return await fn(this.kept);
    } finally {
      this.busy = false;
    }
  }

  /** The kept buffers, no longer kept (to hand them on to whoever needs buffers of that size next). */
  takeBack(): B | undefined {
    const b = this.kept;
    this.kept = undefined;
    return b;
  }
}
