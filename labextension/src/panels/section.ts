/**
 * One collapsible section of the sidebar. A section fetches its own data when the sidebar
 * polls and re-renders only when that data changed, so text stays selectable between polls.
 */

import { JupyterFrontEnd } from '@jupyterlab/application';
import { showDialog, showErrorMessage, Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { LeptonApi } from '../api';
import { h } from '../dom';

/** What a section needs from the sidebar around it. */
export interface ISectionContext {
  api: LeptonApi;
  app: JupyterFrontEnd;
  /** The cluster address from the settings (empty: the embedded cluster). */
  clusterAddress(): string;
  /** Poll now (after an action changed something). */
  refreshNow(): void;
}

export abstract class Section extends Widget {
  constructor(
    readonly key: string,
    title: string,
    protected ctx: ISectionContext,
    open = true
  ) {
    super();
    this.addClass('lp-section');
    this.id = `lepton-section-${key}`;
    this.details = h('details', { className: 'lp-details', data: { section: key } });
    this.details.open = open;
    this.countEl = h('span', { className: 'lp-count' });
    this.details.append(
      h('summary', { className: 'lp-summary' }, h('span', { text: title }), this.countEl)
    );
    this.body = h('div', { className: 'lp-body' });
    this.details.append(this.body);
    this.node.append(this.details);
    this.details.addEventListener('toggle', () => {
      if (this.details.open) {
        this.ctx.refreshNow();
      }
    });
  }

  /** Collapsed sections are not fetched. */
  get expanded(): boolean {
    return this.details.open;
  }

  /** Fetch and render; throws when the request fails (the sidebar backs off). */
  abstract refresh(): Promise<void>;

  /** Render `data` unless it equals what is shown (compared as JSON). */
  protected renderIf(data: unknown, render: () => Array<Node | null>, force = false): void {
    const json = JSON.stringify(data);
    if (!force && json === this.shown) {
      return;
    }
    this.shown = json;
    this.body.replaceChildren(...render().filter((n): n is Node => n !== null));
  }

  protected setCount(text: string): void {
    this.countEl.textContent = text;
  }

  /** Ask, then run an action; its failure is shown as one line. */
  protected async confirmThen(
    title: string,
    question: string,
    accept: string,
    action: () => Promise<unknown>
  ): Promise<void> {
    const result = await showDialog({
      title,
      body: question,
      buttons: [Dialog.cancelButton({ label: 'Keep' }), Dialog.warnButton({ label: accept })]
    });
    if (result.button.accept) {
      await this.act(title, action);
    }
  }

  /** Run an action; show its failure as one line and poll again either way. */
  protected async act(title: string, action: () => Promise<unknown>): Promise<void> {
    try {
      await action();
    } catch (err) {
      await showErrorMessage(title, (err as Error).message || String(err));
    } finally {
      this.shown = '';
      this.ctx.refreshNow();
    }
  }

  protected details: HTMLDetailsElement;
  protected body: HTMLDivElement;
  private countEl: HTMLSpanElement;
  private shown = '';
}

/** A message row ("no jobs yet", errors). */
export function note(text: string, className = 'lp-note'): HTMLElement {
  return h('div', { className, text });
}
