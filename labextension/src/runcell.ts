/**
 * "Run cell on cluster…": a small dialog for resources, then the active cell runs as
 * `%%lepton` with those flags (the flags are written into the cell, so what ran stays visible
 * and reruns the same way).
 */

import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { h } from './dom';
import { ICellResources, magicLine, validateResources, withMagic } from './magic';

type Field = { key: keyof ICellResources; label: string; kind: 'number' | 'text' | 'check'; hint: string };

const FIELDS: Field[] = [
  { key: 'cpus', label: 'CPUs', kind: 'number', hint: 'per task or rank' },
  { key: 'gpus', label: 'GPUs', kind: 'number', hint: 'fractions share a GPU' },
  { key: 'memory', label: 'Memory', kind: 'text', hint: 'e.g. 4GiB; empty: no reservation' },
  { key: 'timeout', label: 'Timeout (s)', kind: 'number', hint: 'empty: none' },
  { key: 'workers', label: 'Workers', kind: 'number', hint: 'ranks of a warm group; empty: one task' },
  { key: 'name', label: 'Job name', kind: 'text', hint: 'optional' },
  { key: 'detach', label: 'Detach', kind: 'check', hint: 'the job outlives the kernel' }
];

/** The dialog's body: one input per flag, prefilled from the settings. */
export class ResourcesForm extends Widget implements Dialog.IBodyWidget<ICellResources> {
  constructor(defaults: ICellResources) {
    super();
    this.addClass('lp-run-form');
    for (const f of FIELDS) {
      const input = h('input', { className: 'lp-input', data: { field: f.key } });
      const value = defaults[f.key];
      if (f.kind === 'check') {
        input.type = 'checkbox';
        input.checked = value === true;
      } else {
        input.type = f.kind === 'number' ? 'number' : 'text';
        if (f.kind === 'number') {
          input.min = '0';
          input.step = 'any';
        }
        input.value = value === null || value === undefined ? '' : String(value);
      }
      this.inputs.set(f.key, input);
      this.node.append(
        h('label', { className: 'lp-form-row', title: f.hint }, h('span', { text: f.label }), input)
      );
    }
  }

  getValue(): ICellResources {
    const text = (k: keyof ICellResources) => (this.inputs.get(k) as HTMLInputElement).value.trim();
    const num = (k: keyof ICellResources) => (text(k) === '' ? null : Number(text(k)));
    return {
      cpus: num('cpus'),
      gpus: num('gpus'),
      memory: text('memory'),
      timeout: num('timeout'),
      workers: num('workers'),
      name: text('name'),
      detach: (this.inputs.get('detach') as HTMLInputElement).checked
    };
  }

  private inputs = new Map<keyof ICellResources, HTMLInputElement>();
}

/**
 * Ask for resources and run the active code cell of the current notebook on the cluster.
 * Resolves once the cell is sent (not when it finishes); `onSent` is called then.
 */
export async function runCellOnCluster(
  tracker: INotebookTracker,
  defaults: ICellResources,
  onSent: () => void
): Promise<void> {
  const panel = tracker.currentWidget;
  const cell = panel?.content.activeCell;
  if (!panel || !cell || cell.model.type !== 'code') {
    await showErrorMessage('Run cell on cluster', 'Select a code cell in a notebook first.');
    return;
  }
  const result = await showDialog({
    title: 'Run cell on cluster',
    body: new ResourcesForm(defaults),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run on cluster' })],
    focusNodeSelector: 'input'
  });
  if (!result.button.accept || !result.value) {
    return;
  }
  const errors = validateResources(result.value);
  if (errors.length) {
    await showErrorMessage('Run cell on cluster', errors.join('; '));
    return;
  }
  await panel.sessionContext.ready;
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel) {
    await showErrorMessage('Run cell on cluster', 'The notebook has no kernel; start one first.');
    return;
  }
  // the magics must be loaded in the kernel (loading twice is harmless)
  const reply = await kernel.requestExecute({
    code: '%load_ext lepton_lab',
    silent: true,
    store_history: false
  }).done;
  if (reply.content.status !== 'ok') {
    await showErrorMessage(
      'Run cell on cluster',
      'The kernel cannot load lepton_lab: install lepton-lab in its environment.'
    );
    return;
  }
  const source = cell.model.sharedModel.getSource();
  cell.model.sharedModel.setSource(withMagic(source, magicLine(result.value)));
  void NotebookActions.run(panel.content, panel.sessionContext);
  onSent();
}
