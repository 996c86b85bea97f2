/**
 * The `%%lepton` line the "Run cell on cluster…" dialog writes (pure; tested with jest).
 * The flags are those of `%%lepton --help`; the kernel validates them again.
 */

export interface ICellResources {
  cpus: number | null;
  gpus: number | null;
  /** e.g. "4GiB", "512MB"; empty for the default. */
  memory: string;
  /** Seconds; null for none. */
  timeout: number | null;
  /** Ranks of a warm group; null for a one-shot task. */
  workers: number | null;
  name: string;
  detach: boolean;
}

export const DEFAULT_RESOURCES: ICellResources = {
  cpus: 1,
  gpus: 0,
  memory: '',
  timeout: null,
  workers: null,
  name: '',
  detach: false
};

const MEMORY = /^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|K|M|G|T)?$/i;
const NAME = /^[A-Za-z0-9_.-]+$/;

/** What is wrong with the resources, one line each (empty when they are fine). */
export function validateResources(r: ICellResources): string[] {
  const errors: string[] = [];
  const nonNegative = (v: number | null, what: string) => {
    if (v !== null && (!isFinite(v) || v < 0)) {
      errors.push(`${what} must be a number, 0 or more`);
    }
  };
  nonNegative(r.cpus, 'CPUs');
  nonNegative(r.gpus, 'GPUs');
  if (r.timeout !== null && (!isFinite(r.timeout) || r.timeout <= 0)) {
    errors.push('timeout must be a number of seconds above 0');
  }
  if (r.workers !== null && (!Number.isInteger(r.workers) || r.workers < 1)) {
    errors.push('workers must be a whole number, 1 or more');
  }
  if (r.memory.trim() && !MEMORY.test(r.memory.trim())) {
    errors.push('memory must look like 4GiB or 512MB');
  }
  if (r.name.trim() && !NAME.test(r.name.trim())) {
    errors.push('name may hold letters, digits, "_", "-" and "." only');
  }
  if (r.detach && r.workers !== null) {
    errors.push('a warm group (workers) cannot be detached');
  }
  return errors;
}

/** `%%lepton --cpus 2 --gpus 1 ...` for these resources (defaults are left out). */
export function magicLine(r: ICellResources): string {
  const flags: string[] = ['%%lepton'];
  const num = (v: number) => String(Number(v.toPrecision(6)));
  if (r.workers !== null) {
    flags.push('--workers', String(r.workers));
  }
  if (r.cpus !== null && r.cpus !== 1) {
    flags.push('--cpus', num(r.cpus));
  }
  if (r.gpus) {
    flags.push('--gpus', num(r.gpus));
  }
  if (r.memory.trim()) {
    flags.push('--memory', r.memory.replace(/\s+/g, ''));
  }
  if (r.timeout !== null) {
    flags.push('--timeout', num(r.timeout));
  }
  if (r.name.trim()) {
    flags.push('--name', r.name.trim());
  }
  if (r.detach) {
    flags.push('--detach');
  }
  return flags.join(' ');
}

/**
 * The cell source with `line` as its first line: an existing `%%lepton ...` line (a
 * `%%lepton train` or `tune` line is kept as it is) is replaced, any other source gets the
 * line on top.
 */
export function withMagic(source: string, line: string): string {
  const lines = source.split('\n');
  const first = lines[0].trim();
  if (/^%%lepton\s+(train|tune)\b/.test(first)) {
    return source;
  }
  if (first === '%%lepton' || first.startsWith('%%lepton ')) {
    return [line, ...lines.slice(1)].join('\n');
  }
  return `${line}\n${source}`;
}

/**
 * Whether running this cell sends work to the cluster (a `%%lepton` cell, or a `%lepton`
 * line such as `%lepton run` or `%lepton deploy`): the sidebar then polls soon, so that a
 * short job shows while it runs rather than at the next regular poll.
 */
export function sendsToCluster(source: string): boolean {
  return source.split('\n').some(l => /^\s*%%?lepton(\s|$)/.test(l));
}
