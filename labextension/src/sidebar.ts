/**
 * The Lepton sidebar: a header with the connection state and four sections. One poller
 * refreshes the open sections together, backs off while requests fail, and stops while the
 * sidebar is hidden.
 */

import { JupyterFrontEnd } from '@jupyterlab/application';
import { refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Panel, Widget } from '@lumino/widgets';

import { LeptonApi } from './api';
import { button, h } from './dom';
import { BackoffPoller } from './poller';
import { ClusterSection } from './panels/cluster';
import { JobsSection } from './panels/jobs';
import { ModelsSection } from './panels/models';
import { RunsSection } from './panels/runs';
import { ISectionContext, Section } from './panels/section';
import { DEFAULT_SETTINGS, ILeptonSettings } from './settings';

export class LeptonSidebar extends Panel {
  constructor(app: JupyterFrontEnd, api: LeptonApi) {
    super();
    this.id = 'lepton-sidebar';
    this.addClass('lp-sidebar');
    this.title.caption = 'Lepton Lab: cluster, jobs, runs, models';
    const ctx: ISectionContext = {
      api,
      app,
      clusterAddress: () => this.settings.clusterAddress,
      refreshNow: () => void this.poller.refresh()
    };
    this.statusEl = h('span', { className: 'lp-header-status', data: { role: 'poll-status' } });
    const refresh = button('', 'refresh', () => void this.poller.refresh(), 'Refresh now');
    refreshIcon.element({ container: refresh, height: '14px', width: '14px' });
    const header = new Widget({
      node: h(
        'div',
        { className: 'lp-header' },
        h('span', { className: 'lp-header-title', text: 'Lepton Lab' }),
        this.statusEl,
        refresh
      )
    });
    this.addWidget(header);
    this.cluster = new ClusterSection(ctx);
    this.jobs = new JobsSection(ctx);
    this.sections = [this.cluster, this.jobs, new RunsSection(ctx), new ModelsSection(ctx)];
    for (const s of this.sections) {
      this.addWidget(s);
    }
    this.poller = new BackoffPoller(() => this.tick(), {
      interval: this.settings.pollInterval * 1000,
      maxInterval: this.settings.maxPollInterval * 1000,
      onTick: (error, next) => this.showPollState(error, next)
    });
    this.poller.pause(); // until the sidebar is shown
  }

  readonly cluster: ClusterSection;
  readonly jobs: JobsSection;

  /** Apply new settings (poll rates take effect from the next poll). */
  configure(settings: ILeptonSettings): void {
    this.settings = settings;
    this.poller.configure(settings.pollInterval * 1000, settings.maxPollInterval * 1000);
  }

  /** Poll now (e.g. after a cell was sent to the cluster). */
  refresh(): Promise<void> {
    return this.poller.refresh();
  }

  dispose(): void {
    this.poller.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.poller.resume();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.poller.pause();
  }

  private async tick(): Promise<void> {
    if (!this.isVisible) {
      return;
    }
    const open = this.sections.filter(s => s.expanded);
    const results = await Promise.allSettled(open.map(s => s.refresh()));
    const failed = results.find(r => r.status === 'rejected') as PromiseRejectedResult | undefined;
    if (failed) {
      throw failed.reason;
    }
  }

  private showPollState(error: unknown | null, nextDelay: number): void {
    const el = this.statusEl;
    if (error === null) {
      el.textContent = `updated ${new Date().toLocaleTimeString()}`;
      el.classList.remove('lp-error');
      el.title = '';
      return;
    }
    const message = (error as Error).message || String(error);
    el.textContent = `${message}; retrying in ${Math.round(nextDelay / 1000)} s`;
    el.title = message;
    el.classList.add('lp-error');
  }

  private settings: ILeptonSettings = DEFAULT_SETTINGS;
  private sections: Section[];
  private poller: BackoffPoller;
  private statusEl: HTMLSpanElement;
}
