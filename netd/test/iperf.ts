import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClusterSession } from '../../test-netns/harness.js';
import { eventually } from '../../test-netns/testing.js';
import { startDaemon, stopDaemon } from '../../sys/process.js';

export interface Interval {
  bps: number;
}

/** iperf3 from `from` to `server` (or the reverse direction with reverse=true), per-second rates. */
export async function iperf(
  s: ClusterSession,
  from: string,
  serverNetns: string,
  serverIp: string,
  seconds: number,
  reverse: boolean,
  port: number,
): Promise<{ intervals: Interval[]; received: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'iperf-'));
  const server = startDaemon({
    argv: ['iperf3', '-s', '-1', '-B', serverIp, '-p', String(port)],
    netns: { name: serverNetns },
    logFile: join(dir, 'server.log'),
  });
  try {
    // iperf3 -s needs a moment to listen: wait for its socket, not for a fixed time.
    const listening = async () =>
      (
        await s.runner.run({ argv: ['ss', '-Htln', 'sport', '=', `:${port}`], netns: { name: serverNetns } })
      ).stdout.trim() !== '';
    if (!(await eventually(listening, 10_000, 20))) throw new Error(`iperf3 server on port ${port} did not listen`);
    const { stdout } = await s.runner.run({
      // -O 1: the first second (slow start, filling the bucket) is left out of the summary.
      argv: [
        'iperf3',
        '-c',
        serverIp,
        '-p',
        String(port),
        '-t',
        String(seconds),
        '-O',
        '1',
        '-i',
        '1',
        '-J',
        ...(reverse ? ['-R'] : []),
      ],
      netns: { name: from },
      timeoutMs: (seconds + 20) * 1000,
    });
    const report = JSON.parse(stdout) as {
      intervals: Array<{ sum: { bits_per_second: number; omitted: boolean } }>;
      end: { sum_received: { bits_per_second: number } };
    };
    return {
      intervals: report.intervals.filter((i) => !i.sum.omitted).map((i) => ({ bps: i.sum.bits_per_second })),
      received: report.end.sum_received.bits_per_second,
    };
  } finally {
    await stopDaemon(server, 1000);
    rmSync(dir, { recursive: true, force: true });
  }
}
