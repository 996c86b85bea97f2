/**
 * The request layer: one typed function per REST route of the Lepton server extension
 * (`lepton_lab/server`), through Jupyter's ServerConnection (token and XSRF handled there).
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { ClusterState, IJob, IModels, IRuns, errorMessage } from './models';

/** A failed request: `status` is the HTTP status (0 when the server did not answer). */
export class LeptonApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'LeptonApiError';
  }
}

/** Milliseconds a request may take before the sidebar gives up on it (no frozen panel). */
const REQUEST_TIMEOUT_MS = 60_000;

export class LeptonApi {
  constructor(private settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  cluster(): Promise<ClusterState> {
    return this.request('cluster');
  }

  connect(address: string): Promise<ClusterState> {
    return this.request('cluster/connect', 'POST', { address });
  }

  disconnect(): Promise<ClusterState> {
    return this.request('cluster/disconnect', 'POST', {});
  }

  async jobs(limit = 50): Promise<IJob[]> {
    const data = await this.request<{ jobs: IJob[] }>(`jobs?limit=${limit}`);
    return data.jobs;
  }

  job(id: string): Promise<IJob> {
    return this.request(`jobs/${encodeURIComponent(id)}`);
  }

  cancel(id: string): Promise<IJob> {
    return this.request(`jobs/${encodeURIComponent(id)}/cancel`, 'POST', {});
  }

  runs(): Promise<IRuns> {
    return this.request('runs');
  }

  rerun(id: string): Promise<{ id: string }> {
    return this.request(`runs/${encodeURIComponent(id)}/rerun`, 'POST', {});
  }

  models(): Promise<IModels> {
    return this.request('models');
  }

  undeploy(name: string): Promise<{ name: string; status: string }> {
    return this.request(`endpoints/${encodeURIComponent(name)}/undeploy`, 'POST', {});
  }

  private async request<T>(path: string, method = 'GET', body?: unknown): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'lepton', 'api', path);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    const init: RequestInit = { method, signal: controller.signal };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (err) {
      const aborted = controller.signal.aborted;
      throw new LeptonApiError(
        aborted
          ? `the Jupyter server did not answer within ${REQUEST_TIMEOUT_MS / 1000} s`
          : 'the Jupyter server cannot be reached',
        0
      );
    } finally {
      clearTimeout(timer);
    }
    const text = await response.text();
    if (!response.ok) {
      throw new LeptonApiError(errorMessage(response.status, text), response.status);
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new LeptonApiError('the Lepton server extension sent a reply that is not JSON', 502);
    }
  }
}
