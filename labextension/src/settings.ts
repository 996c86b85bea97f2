/** The extension's settings (schema/plugin.json), read into one plain object. */

import { DEFAULT_RESOURCES, ICellResources } from './magic';

export const PLUGIN_ID = 'lepton-lab:plugin';

export interface ILeptonSettings {
  /** Seconds between polls while they succeed. */
  pollInterval: number;
  /** Most seconds between polls after failures (the back-off cap). */
  maxPollInterval: number;
  /** Cluster address offered by Connect; empty means the embedded local cluster. */
  clusterAddress: string;
  /** What "Run cell on cluster…" proposes. */
  defaultResources: ICellResources;
}

export const DEFAULT_SETTINGS: ILeptonSettings = {
  pollInterval: 3,
  maxPollInterval: 60,
  clusterAddress: '',
  defaultResources: DEFAULT_RESOURCES
};

/** Settings from the registry's composite object, each value checked, defaults elsewhere. */
export function readSettings(raw: Record<string, unknown> | null | undefined): ILeptonSettings {
  const r = raw || {};
  const num = (v: unknown, fallback: number, min: number) =>
    typeof v === 'number' && isFinite(v) && v >= min ? v : fallback;
  const res = (r.defaultResources || {}) as Partial<Record<keyof ICellResources, unknown>>;
  const optNum = (v: unknown, fallback: number | null) =>
    v === null ? null : typeof v === 'number' && isFinite(v) ? v : fallback;
  const pollInterval = num(r.pollInterval, DEFAULT_SETTINGS.pollInterval, 0.5);
  return {
    pollInterval,
    maxPollInterval: Math.max(pollInterval, num(r.maxPollInterval, DEFAULT_SETTINGS.maxPollInterval, 1)),
    clusterAddress: typeof r.clusterAddress === 'string' ? r.clusterAddress.trim() : '',
    defaultResources: {
      cpus: optNum(res.cpus, DEFAULT_RESOURCES.cpus),
      gpus: optNum(res.gpus, DEFAULT_RESOURCES.gpus),
      memory: typeof res.memory === 'string' ? res.memory : DEFAULT_RESOURCES.memory,
      timeout: optNum(res.timeout, DEFAULT_RESOURCES.timeout),
      workers: optNum(res.workers, DEFAULT_RESOURCES.workers),
      name: '',
      detach: res.detach === true
    }
  };
}
