/** What the sidebar plugin provides to the others (the run-cell plugin refreshes it). */

import { LabIcon } from '@jupyterlab/ui-components';
import { Token } from '@lumino/coreutils';

import { ILeptonSettings } from './settings';
import { LeptonSidebar } from './sidebar';

export interface ILepton {
  sidebar: LeptonSidebar;
  /** The current settings (defaults until the registry answered). */
  settings(): ILeptonSettings;
}

export const ILepton = new Token<ILepton>('lepton-lab:ILepton', 'The Lepton Lab sidebar.');

export const CommandIDs = {
  openSidebar: 'lepton:open-sidebar',
  refresh: 'lepton:refresh',
  runCell: 'lepton:run-cell-on-cluster'
};

const SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="none" stroke="#616161" stroke-width="1.6">
<ellipse cx="12" cy="12" rx="10" ry="4.2"/>
<ellipse cx="12" cy="12" rx="10" ry="4.2" transform="rotate(60 12 12)"/>
<ellipse cx="12" cy="12" rx="10" ry="4.2" transform="rotate(120 12 12)"/>
</g><circle class="jp-icon3" fill="#616161" cx="12" cy="12" r="2.2"/></svg>`;

export const leptonIcon = new LabIcon({ name: 'lepton-lab:icon', svgstr: SVG });
