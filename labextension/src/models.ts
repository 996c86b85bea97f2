/**
 * The data the Lepton REST API returns, and pure functions over it (no DOM, no JupyterLab
 * imports, so jest tests them directly).
 */

export type Resources = Record<string, number | string | null | undefined>;

export interface IGpu {
  name: string;
  memory_total_mb: number;
  memory_used_mb?: number;
  utilization?: number;
}

export interface INode {
  node_id: string;
  address: string | null;
  alive: boolean;
  head: boolean;
  cpus: number;
  gpus: number;
  memory: number;
  object_store?: number;
  gpu_models: IGpu[];
  hostname: string | null;
}

export interface IConnectedCluster {
  state: 'connected';
  address: string;
  kind: string;
  dashboard_url: string | null;
  nodes: INode[];
  total: { CPU: number; GPU: number; memory: number };
  free: { CPU: number; GPU: number; memory: number };
  running_jobs: { id: string }[];
  group?: { world: number; cpus: number; gpus: number; backend: string } | null;
}

export interface IDisconnectedCluster {
  state: 'disconnected';
  reason: string;
  address?: string | null;
}

export type ClusterState = IConnectedCluster | IDisconnectedCluster;

export interface IProgress {
  n: number;
  total: number | null;
  desc?: string;
}

export interface IJob {
  id: string;
  name: string | null;
  kind: string;
  status: string;
  user: string;
  created: number;
  started: number | null;
  finished: number | null;
  elapsed: number | null;
  resources: Resources;
  origin: string | null;
  notebook: string | null;
  error: string | null;
  log_tail: string;
  warnings: string[];
  progress?: IProgress | null;
}

export interface IPipelineRun {
  id: string;
  name: string;
  user: string;
  status: string;
  created: number;
  finished: number | null;
  notebook: string;
  output: string | null;
  parameters: Record<string, unknown>;
  metrics: Record<string, unknown>;
  error: string | null;
  failed_cell: number | null;
  sweep: string | null;
  reproduces: string | null;
}

export interface ITrainingRun {
  id: string;
  job_id: string | null;
  kind: string;
  name: string | null;
  status: string;
  created: number;
  finished: number | null;
  config: Record<string, unknown>;
  metrics: Record<string, unknown>;
  error: string | null;
}

export interface IRuns {
  pipeline: IPipelineRun[];
  training: ITrainingRun[];
  pipeline_available: boolean;
}

export interface IModel {
  ref: string;
  name: string;
  version: number;
  kind: string;
  format: string;
  size: number;
  params: number | null;
  parent: string | null;
  created: number;
  metrics: Record<string, unknown>;
}

export interface IReport {
  id: string;
  model: string;
  created: number;
  target: string | null;
  rows: Record<string, unknown>[];
}

export interface IEndpoint {
  name: string;
  model: string;
  status: string;
  live?: string;
  url: string | null;
  token_hint: string | null;
  error: string | null;
  updated: number;
}

export interface IModels {
  models: IModel[];
  reports: IReport[];
  endpoints: IEndpoint[];
}

/** Jobs that still run come first, then the newest. */
export function sortJobs(jobs: IJob[]): IJob[] {
  const rank = (j: IJob) => (j.status === 'running' ? 0 : 1);
  return [...jobs].sort((a, b) => rank(a) - rank(b) || b.created - a.created);
}

/** Seconds a job has run: up to now while it runs, up to its end after. */
export function jobElapsed(job: IJob, nowSeconds: number): number | null {
  if (job.started === null || job.started === undefined) {
    return null;
  }
  const end = job.finished ?? nowSeconds;
  return Math.max(0, end - job.started);
}

/** A fraction in [0, 1] when the job reports a bounded progress, else null. */
export function progressFraction(job: IJob): number | null {
  const p = job.progress;
  if (!p || !p.total || p.total <= 0) {
    return null;
  }
  return Math.min(1, Math.max(0, p.n / p.total));
}

/** The last `lines` lines of a text (no trailing empty line). */
export function tailLines(text: string, lines: number): string {
  const all = (text || '').replace(/\s+$/, '').split('\n');
  return all.slice(Math.max(0, all.length - lines)).join('\n');
}

/** GPU memory used on a node, as a fraction in [0, 1], when the node reported it. */
export function gpuMemoryFraction(gpu: IGpu): number | null {
  if (gpu.memory_used_mb === undefined || !gpu.memory_total_mb) {
    return null;
  }
  return Math.min(1, gpu.memory_used_mb / gpu.memory_total_mb);
}

/** Which notebook a job came from, as a path the document manager can open, or null. */
export function notebookOf(job: IJob): string | null {
  if (job.notebook) {
    return job.notebook;
  }
  const origin = job.origin || '';
  return origin.endsWith('.ipynb') && !origin.startsWith('kernel:') ? origin : null;
}

/** True when some job on the list still runs (the sidebar then polls at the base rate). */
export function anyRunning(jobs: IJob[]): boolean {
  return jobs.some(j => j.status === 'running');
}

/**
 * One line that says what went wrong, from an HTTP status and the body the server sent
 * (JSON `{"error": ...}` from the Lepton handlers, or anything else).
 */
export function errorMessage(status: number, body: string): string {
  let message = '';
  try {
    const data = JSON.parse(body);
    message = String(data.error || data.message || data.reason || '');
  } catch {
    message = body.replace(/<[^>]*>/g, ' ');
  }
  message = message.trim().split('\n')[0].trim();
  if (status === 403 || status === 401) {
    return message || 'not authorised: reload JupyterLab and log in again';
  }
  if (!message) {
    return `the Lepton server extension answered HTTP ${status}`;
  }
  return message.length > 300 ? message.slice(0, 297) + '...' : message;
}
