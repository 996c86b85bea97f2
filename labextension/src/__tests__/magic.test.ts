import {
  DEFAULT_RESOURCES,
  ICellResources,
  magicLine,
  sendsToCluster,
  validateResources,
  withMagic
} from '../magic';
import { readSettings } from '../settings';

const res = (over: Partial<ICellResources>): ICellResources => ({ ...DEFAULT_RESOURCES, ...over });

describe('magicLine', () => {
  it('leaves defaults out', () => {
    expect(magicLine(DEFAULT_RESOURCES)).toBe('%%lepton');
  });

  it('writes every flag the dialog has', () => {
    expect(
      magicLine(res({ cpus: 2, gpus: 0.5, memory: '4 GiB', timeout: 300, name: 'sweep', detach: true }))
    ).toBe('%%lepton --cpus 2 --gpus 0.5 --memory 4GiB --timeout 300 --name sweep --detach');
    expect(magicLine(res({ workers: 2, cpus: null }))).toBe('%%lepton --workers 2');
  });
});

describe('validateResources', () => {
  it('accepts sensible values', () => {
    expect(validateResources(res({ cpus: 0.5, memory: '512MB', timeout: 10, workers: 4 }))).toEqual([]);
  });

  it('says what is wrong, one line each', () => {
    const errors = validateResources(
      res({ cpus: -1, gpus: NaN, memory: 'lots', timeout: 0, workers: 1.5, name: 'a b' })
    );
    expect(errors).toEqual([
      'CPUs must be a number, 0 or more',
      'GPUs must be a number, 0 or more',
      'timeout must be a number of seconds above 0',
      'workers must be a whole number, 1 or more',
      'memory must look like 4GiB or 512MB',
      'name may hold letters, digits, "_", "-" and "." only'
    ]);
    expect(validateResources(res({ workers: 2, detach: true }))).toEqual([
      'a warm group (workers) cannot be detached'
    ]);
  });
});

describe('withMagic', () => {
  it('puts the line on top of plain code', () => {
    expect(withMagic('x = 1\nprint(x)', '%%lepton --cpus 2')).toBe('%%lepton --cpus 2\nx = 1\nprint(x)');
  });

  it('replaces an existing %%lepton line', () => {
    expect(withMagic('%%lepton --gpus 1\nx = 1', '%%lepton --cpus 2')).toBe('%%lepton --cpus 2\nx = 1');
    expect(withMagic('%%lepton\nx = 1', '%%lepton --detach')).toBe('%%lepton --detach\nx = 1');
  });

  it('keeps train and tune cells as they are', () => {
    const src = '%%lepton train --workers 2\nfit()';
    expect(withMagic(src, '%%lepton --cpus 2')).toBe(src);
  });

  it('does not take %%leptonx for %%lepton', () => {
    expect(withMagic('%%leptonx\ny', '%%lepton')).toBe('%%lepton\n%%leptonx\ny');
  });
});

describe('readSettings', () => {
  it('fills defaults and rejects nonsense', () => {
    const s = readSettings({ pollInterval: 0.1, maxPollInterval: 1, clusterAddress: ' head:6379 ' });
    expect(s.pollInterval).toBe(3);
    expect(s.maxPollInterval).toBe(3); // never below the base interval
    expect(s.clusterAddress).toBe('head:6379');
    expect(s.defaultResources).toEqual(DEFAULT_RESOURCES);
  });

  it('reads default resources', () => {
    const s = readSettings({ pollInterval: 5, defaultResources: { cpus: 4, gpus: 1, timeout: null, detach: true } });
    expect(s.pollInterval).toBe(5);
    expect(s.defaultResources).toMatchObject({ cpus: 4, gpus: 1, timeout: null, detach: true, memory: '' });
  });
});

describe('sendsToCluster', () => {
  it('is true for a %%lepton cell and a %lepton line', () => {
    expect(sendsToCluster('%%lepton --gpus 1\nx = 1')).toBe(true);
    expect(sendsToCluster('%%lepton\nx = 1')).toBe(true);
    expect(sendsToCluster('model = 1\n%lepton deploy model')).toBe(true);
  });
  it('is false for plain code and look-alikes', () => {
    expect(sendsToCluster('x = 1')).toBe(false);
    expect(sendsToCluster('%load_ext lepton_lab')).toBe(false);
    expect(sendsToCluster('%%leptonx\ny')).toBe(false);
    expect(sendsToCluster('# %%lepton in a comment')).toBe(false);
  });
});
