/** Cluster: address, nodes, CPUs and GPUs, per-node GPU use and memory, dashboard, connect. */

import { ClusterState, gpuMemoryFraction, IConnectedCluster, INode } from '../models';
import { formatBytes, formatFree, formatNumber, formatPercent } from '../formatters';
import { button, h, pill } from '../dom';
import { note, Section, ISectionContext } from './section';

const KIND: Record<string, string> = {
  embedded: 'embedded local Ray',
  address: 'Ray cluster',
  client: 'Ray Client'
};

export class ClusterSection extends Section {
  constructor(ctx: ISectionContext) {
    super('cluster', 'Cluster', ctx);
  }

  /** The last state fetched (the sidebar's header shows it too). */
  state: ClusterState | null = null;

  async refresh(): Promise<void> {
    const st = await this.ctx.api.cluster();
    this.state = st;
    this.setCount(st.state === 'connected' ? `${st.nodes.length} node(s)` : 'disconnected');
    this.renderIf(st, () => (st.state === 'connected' ? this.connected(st) : this.disconnected(st)));
  }

  private connected(st: IConnectedCluster): Array<Node | null> {
    const dash = st.dashboard_url
      ? h('a', {
          className: 'lp-link',
          href: st.dashboard_url,
          target: '_blank',
          text: 'Ray dashboard',
          data: { role: 'dashboard' }
        })
      : h('span', { className: 'lp-muted', text: 'no dashboard' });
    const head = h(
      'div',
      { className: 'lp-row lp-cluster-head' },
      pill('connected', 'lp-status-ok'),
      h('code', { className: 'lp-address', text: st.address, title: KIND[st.kind] || st.kind }),
      dash,
      button('Disconnect', 'disconnect', () =>
        this.act('Disconnect', () => this.ctx.api.disconnect())
      )
    );
    const totals = h(
      'div',
      { className: 'lp-kv' },
      h('span', { text: `CPUs ${formatFree(st.free.CPU, st.total.CPU)}` }),
      h('span', { text: `GPUs ${formatFree(st.free.GPU, st.total.GPU)}` }),
      h('span', {
        text: `memory ${formatBytes(st.free.memory)} / ${formatBytes(st.total.memory)} free`
      }),
      h('span', { text: `${st.running_jobs.length} running job(s)` })
    );
    const group = st.group
      ? note(`warm group: ${st.group.world} rank(s), backend ${st.group.backend}`, 'lp-muted')
      : null;
    const table = h(
      'table',
      { className: 'lp-table' },
      h(
        'tr',
        {},
        ...['node', 'state', 'CPUs', 'memory', 'GPUs'].map(t => h('th', { text: t }))
      ),
      ...st.nodes.map(n => this.nodeRow(n))
    );
    return [head, totals, group, table];
  }

  private nodeRow(n: INode): HTMLTableRowElement {
    const gpus = n.gpu_models.length
      ? h(
          'div',
          { className: 'lp-gpus' },
          ...n.gpu_models.map(g => {
            const mem = gpuMemoryFraction(g);
            return h(
              'div',
              { className: 'lp-gpu', title: g.name },
              h('span', { text: g.name.replace(/^NVIDIA /, '') }),
              h('span', {
                text: ` util ${g.utilization === undefined ? '–' : `${g.utilization}%`}`
              }),
              h('span', { text: ` mem ${formatPercent(mem)}` }),
              meter(mem)
            );
          })
        )
      : h('span', { text: n.gpus ? formatNumber(n.gpus) : 'none' });
    return h(
      'tr',
      {},
      h('td', { text: `${n.head ? '★ ' : ''}${n.hostname || n.address || n.node_id.slice(0, 8)}` }),
      h('td', { text: n.alive ? 'alive' : 'dead' }),
      h('td', { text: formatNumber(n.cpus) }),
      h('td', { text: formatBytes(n.memory) }),
      h('td', {}, gpus)
    );
  }

  private disconnected(st: { reason: string; address?: string | null }): Array<Node | null> {
    const input = h('input', {
      className: 'lp-input',
      attrs: { placeholder: 'host:6379, ray://head:10001 or empty for local' }
    });
    input.value = st.address || this.ctx.clusterAddress();
    const connect = button('Connect', 'connect', () =>
      this.act('Connect', () => this.ctx.api.connect(input.value.trim()))
    );
    return [
      h('div', { className: 'lp-row' }, pill('disconnected', 'lp-status-muted')),
      note(st.reason),
      h('div', { className: 'lp-row' }, input, connect)
    ];
  }
}

/** A thin bar for a fraction in [0, 1]. */
export function meter(fraction: number | null): HTMLElement {
  const bar = h('span', { className: 'lp-meter' });
  const fill = h('span', { className: 'lp-meter-fill' });
  fill.style.width = `${Math.round((fraction ?? 0) * 100)}%`;
  bar.append(fill);
  return bar;
}
