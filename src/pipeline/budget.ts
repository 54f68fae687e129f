/** A counting semaphore: how many units may be between the source and the writer at once. */
export class LayerBudget {
  private inFlight = 0;
  private waiters: (() => void)[] = [];

  constructor(readonly limit: number) {
    if (!(limit >= 1)) throw new RangeError(`layers in flight must be >= 1, got ${limit}`);
  }

  async acquire(): Promise<void> {
    if (this.inFlight < this.limit) {
      this.inFlight++;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next(); // hand the slot over directly
    else this.inFlight--;
  }
}
