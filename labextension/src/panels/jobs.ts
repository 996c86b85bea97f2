/**
 * Jobs: running and finished jobs from every kernel and from the command-line tool, with
 * status, progress, elapsed time, a tail of the logs, cancel, and the notebook they came from.
 */

import { IJob, jobElapsed, notebookOf, progressFraction, sortJobs, tailLines } from '../models';
import { formatAge, formatDuration, formatResources, statusClass } from '../formatters';
import { button, h, pill } from '../dom';
import { meter } from './cluster';
import { note, Section, ISectionContext } from './section';

const LOG_LINES = 15;

export class JobsSection extends Section {
  constructor(ctx: ISectionContext) {
    super('jobs', 'Jobs', ctx);
  }

  /** The jobs fetched last (newest first, running ones on top). */
  jobs: IJob[] = [];

  async refresh(): Promise<void> {
    const jobs = sortJobs(await this.ctx.api.jobs(50));
    // an open job's detail carries the live log tail: fetch those alongside
    await Promise.all(
      [...this.open].map(async id => {
        const listed = jobs.find(j => j.id === id);
        if (!listed) {
          this.open.delete(id);
          return;
        }
        if (listed.status === 'running' || !this.details_.has(id)) {
          try {
            this.details_.set(id, await this.ctx.api.job(id));
          } catch {
            this.details_.delete(id);
          }
        }
      })
    );
    this.jobs = jobs;
    const running = jobs.filter(j => j.status === 'running').length;
    this.setCount(running ? `${running} running · ${jobs.length}` : `${jobs.length}`);
    const now = Math.floor(Date.now() / 1000);
    // elapsed times tick while a job runs: re-render then, even if the data is the same
    const key = { jobs, open: [...this.open], logs: [...this.details_.values()], now: running ? now : 0 };
    this.renderIf(key, () => this.render(now));
  }

  private render(now: number): Array<Node | null> {
    if (!this.jobs.length) {
      return [note('No jobs yet. Run a cell with %%lepton, or "Run cell on cluster…".')];
    }
    return [h('ul', { className: 'lp-list' }, ...this.jobs.map(j => this.row(j, now)))];
  }

  private row(job: IJob, now: number): HTMLLIElement {
    const isOpen = this.open.has(job.id);
    const frac = progressFraction(job);
    const head = h(
      'div',
      {
        className: 'lp-item-head',
        title: 'Show the log tail and details',
        onClick: () => this.toggle(job.id)
      },
      pill(job.status, statusClass(job.status)),
      h('span', { className: 'lp-name', text: job.name || job.id }),
      h('span', { className: 'lp-muted', text: job.kind }),
      h('span', {
        className: 'lp-elapsed',
        text: formatDuration(jobElapsed(job, now)),
        title: `created ${formatAge(job.created, now)}`
      }),
      job.status === 'running'
        ? button('Cancel', 'cancel', () =>
            this.confirmThen(
              'Cancel job',
              `Cancel job ${job.name || job.id}? Its remote work stops and its resources are freed.`,
              'Cancel job',
              () => this.ctx.api.cancel(job.id)
            )
          )
        : null
    );
    const li = h('li', { className: 'lp-item', data: { jobId: job.id, status: job.status } }, head);
    if (frac !== null) {
      li.append(
        h(
          'div',
          { className: 'lp-progress' },
          meter(frac),
          h('span', { text: `${job.progress?.desc || ''} ${job.progress?.n}/${job.progress?.total}` })
        )
      );
    }
    if (isOpen) {
      li.append(this.detail(this.details_.get(job.id) || job));
    }
    return li;
  }

  private detail(job: IJob): HTMLElement {
    const nb = notebookOf(job);
    const open = nb
      ? button('Open notebook', 'open-notebook', () =>
          this.act('Open notebook', () =>
            this.ctx.app.commands.execute('docmanager:open', { path: nb })
          )
        )
      : null;
    const log = tailLines(job.log_tail || '', LOG_LINES);
    return h(
      'div',
      { className: 'lp-detail' },
      h(
        'div',
        { className: 'lp-kv' },
        h('span', { text: `id ${job.id}` }),
        h('span', { text: `user ${job.user}` }),
        h('span', { text: formatResources(job.resources) }),
        h('span', { text: `from ${nb || job.origin || 'unknown'}` }),
        open
      ),
      job.error ? h('div', { className: 'lp-error', text: job.error }) : null,
      ...(job.warnings || []).map(w => h('div', { className: 'lp-warning', text: w })),
      h('pre', { className: 'lp-log', text: log || '(no output yet)', data: { role: 'log' } })
    );
  }

  private toggle(id: string): void {
    if (this.open.has(id)) {
      this.open.delete(id);
    } else {
      this.open.add(id);
    }
    this.ctx.refreshNow();
  }

  private open = new Set<string>();
  private details_ = new Map<string, IJob>();
}
