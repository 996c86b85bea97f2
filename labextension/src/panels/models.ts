/** Models & Endpoints: versions, compression reports, endpoint URLs, curl, undeploy. */

import { Clipboard } from '@jupyterlab/apputils';

import { IEndpoint, IModel, IModels, IReport } from '../models';
import { curlExample, formatAge, formatBytes, formatNumber, formatPairs, statusClass } from '../formatters';
import { button, h, pill } from '../dom';
import { note, Section, ISectionContext } from './section';

/** Report columns worth a glance in a narrow sidebar (the full table is in the notebook). */
const REPORT_COLUMNS = ['variant', 'format', 'params', 'size_ratio', 'latency_ms_b1', 'accuracy'];

export class ModelsSection extends Section {
  constructor(ctx: ISectionContext) {
    super('models', 'Models & Endpoints', ctx, false);
  }

  async refresh(): Promise<void> {
    const data = await this.ctx.api.models();
    const live = data.endpoints.filter(e => e.status !== 'deleted').length;
    this.setCount(`${data.models.length} model(s) · ${live} endpoint(s)`);
    const now = Math.floor(Date.now() / 1000);
    this.renderIf(data, () => this.render(data, now));
  }

  private render(data: IModels, now: number): Array<Node | null> {
    return [
      h('h4', { className: 'lp-subhead', text: 'Endpoints' }),
      data.endpoints.length
        ? h('ul', { className: 'lp-list' }, ...data.endpoints.map(e => this.endpoint(e)))
        : note('No endpoints: `%lepton deploy NAME:VERSION --name API`.'),
      h('h4', { className: 'lp-subhead', text: 'Models' }),
      data.models.length
        ? h('ul', { className: 'lp-list' }, ...data.models.map(m => this.model(m, now)))
        : note('No models: `%lepton register model NAME`.'),
      h('h4', { className: 'lp-subhead', text: 'Compression reports' }),
      data.reports.length
        ? h('div', {}, ...data.reports.map(r => this.report(r, now)))
        : note('No reports: `%lepton compress NAME ...`.')
    ];
  }

  private endpoint(e: IEndpoint): HTMLLIElement {
    const live = e.live || e.status;
    const curl = e.url ? curlExample(e.url) : '';
    return h(
      'li',
      { className: 'lp-item', data: { endpoint: e.name, status: e.status } },
      h(
        'div',
        { className: 'lp-item-head' },
        pill(live, statusClass(live)),
        h('span', { className: 'lp-name', text: e.name }),
        h('span', { className: 'lp-muted', text: e.model }),
        e.status !== 'deleted'
          ? button('Undeploy', 'undeploy', () =>
              this.confirmThen(
                'Undeploy endpoint',
                `Delete endpoint ${e.name}? Its URL stops answering.`,
                'Undeploy',
                () => this.ctx.api.undeploy(e.name)
              )
            )
          : null
      ),
      e.url ? h('a', { className: 'lp-link', href: e.url, target: '_blank', text: e.url }) : null,
      e.token_hint ? h('div', { className: 'lp-muted', text: `token ${e.token_hint}` }) : null,
      e.error ? h('div', { className: 'lp-error', text: e.error }) : null,
      curl
        ? h(
            'div',
            { className: 'lp-curl' },
            h('pre', { className: 'lp-log', text: curl }),
            button('Copy curl', 'copy-curl', () => Clipboard.copyToSystem(curl), 'Copy the curl example (token from $LEPTON_TOKEN)')
          )
        : null
    );
  }

  private model(m: IModel, now: number): HTMLLIElement {
    return h(
      'li',
      { className: 'lp-item', data: { model: m.ref } },
      h(
        'div',
        { className: 'lp-item-head' },
        h('span', { className: 'lp-name', text: m.ref }),
        h('span', { className: 'lp-muted', text: `${m.kind}/${m.format}` }),
        h('span', { text: formatBytes(m.size) }),
        h('span', { className: 'lp-muted', text: formatAge(m.created, now) })
      ),
      h('div', {
        className: 'lp-pairs',
        text: `${m.params !== null ? `${formatNumber(m.params)} params · ` : ''}${
          m.parent ? `from ${m.parent} · ` : ''
        }metrics: ${formatPairs(m.metrics)}`
      })
    );
  }

  private report(r: IReport, now: number): HTMLElement {
    const cols = REPORT_COLUMNS.filter(c => r.rows.some(row => c in row));
    return h(
      'div',
      { className: 'lp-report', data: { report: r.id } },
      h('div', { className: 'lp-muted', text: `${r.model} · ${r.target || 'cpu'} · ${formatAge(r.created, now)}` }),
      h(
        'table',
        { className: 'lp-table' },
        h('tr', {}, ...cols.map(c => h('th', { text: c }))),
        ...r.rows.map(row => h('tr', {}, ...cols.map(c => h('td', { text: formatNumber(row[c]) }))))
      )
    );
  }
}
