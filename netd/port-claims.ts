/**
 * Names (host ports, ifbs, eth0 proxy entries) that an ADD is wiring right now. The reconciler
 * never removes a claimed name as an orphan, and leaves its rate limits to the ADD. Counted, so
 * two claims on one name (a retried ADD meeting the first) both have to end.
 */
export class PortClaims {
  private readonly held = new Map<string, number>();

  /** Claims `name` until the returned function is called (once). */
  claim(name: string): () => void {
    this.held.set(name, (this.held.get(name) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.held.get(name) ?? 1) - 1;
      if (n <= 0) this.held.delete(name);
      else this.held.set(name, n);
    };
  }

  has(name: string): boolean {
    return this.held.has(name);
  }

  names(): Set<string> {
    return new Set(this.held.keys());
  }
}

/** The claim an eth0 ADD holds on its address's proxy entry on the uplink (routed mode). */
export const proxyClaim = (ip: string) => `proxy:${ip}`;
