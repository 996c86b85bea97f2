/** Runs: pipeline runs with their parameters and metrics (and rerun), and training runs. */

import { IPipelineRun, IRuns, ITrainingRun } from '../models';
import { formatAge, formatDuration, formatPairs, statusClass } from '../formatters';
import { button, h, pill } from '../dom';
import { note, Section, ISectionContext } from './section';

export class RunsSection extends Section {
  constructor(ctx: ISectionContext) {
    super('runs', 'Runs', ctx, false);
  }

  async refresh(): Promise<void> {
    const runs = await this.ctx.api.runs();
    this.setCount(`${runs.pipeline.length + runs.training.length}`);
    const now = Math.floor(Date.now() / 1000);
    this.renderIf(runs, () => this.render(runs, now));
  }

  private render(runs: IRuns, now: number): Array<Node | null> {
    const out: Array<Node | null> = [h('h4', { className: 'lp-subhead', text: 'Pipeline runs' })];
    if (!runs.pipeline_available) {
      out.push(note('Pipeline runs are not available in this version of lepton_lab.'));
    } else if (!runs.pipeline.length) {
      out.push(note('No pipeline runs yet: `lepton run NOTEBOOK -p NAME VALUE`.'));
    } else {
      out.push(h('ul', { className: 'lp-list' }, ...runs.pipeline.map(r => this.pipeline(r, now))));
    }
    out.push(h('h4', { className: 'lp-subhead', text: 'Training runs' }));
    out.push(
      runs.training.length
        ? h('ul', { className: 'lp-list' }, ...runs.training.map(r => this.training(r, now)))
        : note('No training runs yet: `%%lepton train`.')
    );
    return out;
  }

  private pipeline(run: IPipelineRun, now: number): HTMLLIElement {
    const duration = run.finished ? formatDuration(run.finished - run.created) : 'running';
    return h(
      'li',
      { className: 'lp-item', data: { runId: run.id, status: run.status } },
      h(
        'div',
        { className: 'lp-item-head' },
        pill(run.status, statusClass(run.status)),
        h('span', { className: 'lp-name', text: run.name, title: run.notebook }),
        h('span', { className: 'lp-muted', text: formatAge(run.created, now) }),
        h('span', { className: 'lp-elapsed', text: duration }),
        run.output
          ? button('Open', 'open-output', () =>
              this.act('Open run', () =>
                this.ctx.app.commands.execute('docmanager:open', { path: run.output })
              )
            )
          : null,
        button('Rerun', 'rerun', () =>
          this.act('Rerun', () => this.ctx.api.rerun(run.id))
        )
      ),
      h('div', { className: 'lp-pairs', text: `parameters: ${formatPairs(run.parameters)}` }),
      h('div', { className: 'lp-pairs', text: `metrics: ${formatPairs(run.metrics)}` }),
      run.error
        ? h('div', {
            className: 'lp-error',
            text: run.failed_cell !== null ? `cell ${run.failed_cell}: ${run.error}` : run.error
          })
        : null
    );
  }

  private training(run: ITrainingRun, now: number): HTMLLIElement {
    return h(
      'li',
      { className: 'lp-item', data: { runId: run.id, status: run.status } },
      h(
        'div',
        { className: 'lp-item-head' },
        pill(run.status, statusClass(run.status)),
        h('span', { className: 'lp-name', text: run.name || run.id }),
        h('span', { className: 'lp-muted', text: `${run.kind} · ${formatAge(run.created, now)}` })
      ),
      h('div', { className: 'lp-pairs', text: `metrics: ${formatPairs(run.metrics)}` }),
      run.error ? h('div', { className: 'lp-error', text: run.error }) : null
    );
  }
}
