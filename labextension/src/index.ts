/** Lepton Lab for JupyterLab: this file only wires the plugins together. */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { LeptonApi } from './api';
import { sendsToCluster } from './magic';
import { runCellOnCluster } from './runcell';
import { DEFAULT_SETTINGS, ILeptonSettings, PLUGIN_ID, readSettings } from './settings';
import { LeptonSidebar } from './sidebar';
import { CommandIDs, ILepton, leptonIcon } from './tokens';

const CATEGORY = 'Lepton Lab';

const sidebarPlugin: JupyterFrontEndPlugin<ILepton> = {
  id: PLUGIN_ID,
  description: 'The Lepton sidebar: cluster, jobs, runs, models and endpoints.',
  autoStart: true,
  provides: ILepton,
  optional: [ILayoutRestorer, ISettingRegistry, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    registry: ISettingRegistry | null,
    palette: ICommandPalette | null
  ): ILepton => {
    let settings: ILeptonSettings = DEFAULT_SETTINGS;
    const sidebar = new LeptonSidebar(app, new LeptonApi());
    sidebar.title.icon = leptonIcon;
    app.shell.add(sidebar, 'left', { rank: 800 });
    restorer?.add(sidebar, 'lepton-sidebar');

    if (registry) {
      void registry.load(PLUGIN_ID).then(
        loaded => {
          const apply = () => {
            settings = readSettings(loaded.composite as Record<string, unknown>);
            sidebar.configure(settings);
          };
          apply();
          loaded.changed.connect(apply);
        },
        err => console.warn(`lepton-lab: settings not loaded (${err}); using the defaults`)
      );
    }

    app.commands.addCommand(CommandIDs.openSidebar, {
      label: 'Show the Lepton sidebar',
      icon: leptonIcon,
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh the Lepton sidebar',
      execute: () => sidebar.refresh()
    });
    for (const command of [CommandIDs.openSidebar, CommandIDs.refresh]) {
      palette?.addItem({ command, category: CATEGORY });
    }
    return { sidebar, settings: () => settings };
  }
};

const runCellPlugin: JupyterFrontEndPlugin<void> = {
  id: 'lepton-lab:run-cell',
  description: 'Run the active notebook cell on the cluster as %%lepton.',
  autoStart: true,
  requires: [INotebookTracker, ILepton],
  optional: [ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    lepton: ILepton,
    palette: ICommandPalette | null
  ) => {
    app.commands.addCommand(CommandIDs.runCell, {
      label: 'Run cell on cluster…',
      caption: 'Run the active cell on the Ray cluster with the resources you choose',
      icon: leptonIcon,
      isEnabled: () => !!tracker.currentWidget?.content.activeCell,
      execute: () =>
        runCellOnCluster(tracker, lepton.settings().defaultResources, () => {
          // the job is in the store once the kernel submitted it: poll soon after
          setTimeout(() => void lepton.sidebar.refresh(), 1500);
        })
    });
    palette?.addItem({ command: CommandIDs.runCell, category: CATEGORY });
    // any cell that sends work to the cluster, however it was run: poll soon after
    NotebookActions.executionScheduled.connect((_, { cell }) => {
      if (cell.model.type === 'code' && sendsToCluster(cell.model.sharedModel.getSource())) {
        setTimeout(() => void lepton.sidebar.refresh(), 1500);
      }
    });
  }
};

export default [sidebarPlugin, runCellPlugin];
