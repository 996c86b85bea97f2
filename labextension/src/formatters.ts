/** Small text formatters for the sidebar (pure functions, tested with jest). */

import { Resources } from './models';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** "0.4 s", "42 s", "3 min 05 s", "2 h 07 min", "3 d 4 h". */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds) || seconds < 0) {
    return '–';
  }
  if (seconds < 10) {
    return `${(Math.floor(seconds * 10) / 10).toFixed(1)} s`;
  }
  const s = Math.floor(seconds);
  if (s < 60) {
    return `${s} s`;
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
  }
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** Bytes as "512 B", "3.2 MiB", "15.6 GiB". */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !isFinite(bytes) || bytes < 0) {
    return '–';
  }
  if (bytes >= GiB) {
    return `${(bytes / GiB).toFixed(1)} GiB`;
  }
  if (bytes >= MiB) {
    return `${(bytes / MiB).toFixed(1)} MiB`;
  }
  if (bytes >= 1024) {
    return `${(bytes / 1024).toFixed(1)} KiB`;
  }
  return `${Math.round(bytes)} B`;
}

/** "just now", "12 s ago", "5 min ago", "3 h ago", then a date. */
export function formatAge(timestampSeconds: number, nowSeconds: number): string {
  const d = nowSeconds - timestampSeconds;
  if (d < 5) {
    return 'just now';
  }
  if (d < 60) {
    return `${Math.floor(d)} s ago`;
  }
  if (d < 3600) {
    return `${Math.floor(d / 60)} min ago`;
  }
  if (d < 86400) {
    return `${Math.floor(d / 3600)} h ago`;
  }
  return new Date(timestampSeconds * 1000).toISOString().slice(0, 10);
}

/** A number the way people read it: integers plain, others with 4 significant digits. */
export function formatNumber(value: unknown): string {
  if (typeof value !== 'number') {
    return value === null || value === undefined ? '–' : String(value);
  }
  if (!isFinite(value)) {
    return String(value);
  }
  if (Number.isInteger(value)) {
    return String(value);
  }
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) {
    return value.toExponential(3);
  }
  return String(Number(value.toPrecision(4)));
}

/** The resources a job asked for: "2 CPU · 1 GPU · 4.0 GiB" (nothing asked: "default"). */
export function formatResources(res: Resources | null | undefined): string {
  if (!res) {
    return 'default';
  }
  const parts: string[] = [];
  const num = (k: string) => (typeof res[k] === 'number' ? (res[k] as number) : null);
  const cpus = num('cpus') ?? num('CPU');
  const gpus = num('gpus') ?? num('GPU');
  const memory = num('memory');
  const workers = num('workers');
  if (workers) {
    parts.push(`${workers} ranks`);
  }
  if (cpus) {
    parts.push(`${formatNumber(cpus)} CPU`);
  }
  if (gpus) {
    parts.push(`${formatNumber(gpus)} GPU`);
  }
  if (memory) {
    parts.push(formatBytes(memory));
  }
  return parts.length ? parts.join(' · ') : 'default';
}

/** "key=value, key=value" for parameters and metrics (sorted by key, values shortened). */
export function formatPairs(pairs: Record<string, unknown> | null | undefined, limit = 6): string {
  const keys = Object.keys(pairs || {}).sort();
  if (!keys.length) {
    return '–';
  }
  const shown = keys.slice(0, limit).map(k => {
    const v = (pairs as Record<string, unknown>)[k];
    let text = typeof v === 'object' && v !== null ? JSON.stringify(v) : formatNumber(v);
    if (text.length > 24) {
      text = text.slice(0, 21) + '...';
    }
    return `${k}=${text}`;
  });
  return shown.join(', ') + (keys.length > limit ? `, +${keys.length - limit} more` : '');
}

/** The CSS class that colours a status ("lp-status-running", "lp-status-failed"...). */
export function statusClass(status: string): string {
  const known: Record<string, string> = {
    running: 'running',
    deploying: 'running',
    succeeded: 'ok',
    healthy: 'ok',
    RUNNING: 'ok',
    failed: 'bad',
    died: 'bad',
    lost: 'bad',
    timeout: 'bad',
    UNHEALTHY: 'bad',
    DEPLOY_FAILED: 'bad',
    cancelled: 'muted',
    deleted: 'muted'
  };
  return `lp-status-${known[status] || 'other'}`;
}

/** Quote a word for a POSIX shell (single quotes, safe for any content). */
export function shellQuote(word: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) {
    return word;
  }
  return `'${word.replace(/'/g, `'"'"'`)}'`;
}

/**
 * A curl command that calls an endpoint. The token is never known to the sidebar: the
 * command reads it from $LEPTON_TOKEN (the one `%lepton deploy` showed once).
 */
export function curlExample(url: string, sampleInputs = '[[0.0, 0.0, 0.0, 0.0]]'): string {
  const target = shellQuote(url.replace(/\/+$/, '') + '/predict');
  const body = shellQuote(`{"inputs": ${sampleInputs}}`);
  return [
    `curl -X POST ${target} \\`,
    '  -H "Authorization: Bearer $LEPTON_TOKEN" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d ${body}`
  ].join('\n');
}

/** "3/4 free" for CPUs and GPUs (whole numbers shown plain). */
export function formatFree(free: number, total: number): string {
  return `${formatNumber(free)}/${formatNumber(total)} free`;
}

/** A percentage for a fraction in [0, 1]; "–" when unknown. */
export function formatPercent(fraction: number | null): string {
  return fraction === null ? '–' : `${Math.round(fraction * 100)}%`;
}
