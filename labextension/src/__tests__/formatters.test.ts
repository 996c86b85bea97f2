import {
  curlExample,
  formatAge,
  formatBytes,
  formatDuration,
  formatFree,
  formatNumber,
  formatPairs,
  formatPercent,
  formatResources,
  shellQuote,
  statusClass
} from '../formatters';

describe('formatDuration', () => {
  it.each([
    [null, '–'],
    [-1, '–'],
    [NaN, '–'],
    [0, '0.0 s'],
    [0.44, '0.4 s'],
    [9.99, '9.9 s'],
    [42.7, '42 s'],
    [60, '1 min 00 s'],
    [185, '3 min 05 s'],
    [3600, '1 h 00 min'],
    [7625, '2 h 07 min'],
    [3 * 86400 + 4 * 3600 + 5, '3 d 4 h']
  ])('%p -> %p', (s, text) => {
    expect(formatDuration(s as number | null)).toBe(text);
  });
});

describe('formatBytes', () => {
  it('picks the unit', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(2048)).toBe('2.0 KiB');
    expect(formatBytes(3.25 * 1024 ** 2)).toBe('3.3 MiB');
    expect(formatBytes(15.6 * 1024 ** 3)).toBe('15.6 GiB');
    expect(formatBytes(undefined)).toBe('–');
  });
});

describe('formatAge', () => {
  it('is relative and then a date', () => {
    const now = 1_700_000_000;
    expect(formatAge(now - 2, now)).toBe('just now');
    expect(formatAge(now - 30, now)).toBe('30 s ago');
    expect(formatAge(now - 300, now)).toBe('5 min ago');
    expect(formatAge(now - 7200, now)).toBe('2 h ago');
    expect(formatAge(now - 3 * 86400, now)).toBe('2023-11-11');
  });
});

describe('formatNumber', () => {
  it('keeps integers and shortens fractions', () => {
    expect(formatNumber(3)).toBe('3');
    expect(formatNumber(0.123456)).toBe('0.1235');
    expect(formatNumber(98.765432)).toBe('98.77');
    expect(formatNumber(1.5e-5)).toBe('1.500e-5');
    expect(formatNumber(2.5e7)).toBe('25000000');
    expect(formatNumber(2.5e7 + 0.5)).toBe('2.500e+7');
    expect(formatNumber(null)).toBe('–');
    expect(formatNumber('adam')).toBe('adam');
    expect(formatNumber(Infinity)).toBe('Infinity');
  });
});

describe('formatResources', () => {
  it('lists what was asked for', () => {
    expect(formatResources({ cpus: 2, gpus: 0.5, memory: 4 * 1024 ** 3 })).toBe(
      '2 CPU · 0.5 GPU · 4.0 GiB'
    );
    expect(formatResources({ workers: 2, cpus: 1 })).toBe('2 ranks · 1 CPU');
    expect(formatResources({})).toBe('default');
    expect(formatResources(null)).toBe('default');
  });
});

describe('formatPairs', () => {
  it('sorts, shortens and counts the rest', () => {
    expect(formatPairs({ lr: 0.001, epochs: 3 })).toBe('epochs=3, lr=0.001');
    expect(formatPairs({})).toBe('–');
    expect(formatPairs({ a: 1, b: 2, c: 3 }, 2)).toBe('a=1, b=2, +1 more');
    expect(formatPairs({ s: 'x'.repeat(40) })).toBe(`s=${'x'.repeat(21)}...`);
    expect(formatPairs({ l: [1, 2] })).toBe('l=[1,2]');
  });
});

describe('statusClass', () => {
  it('colours by meaning', () => {
    expect(statusClass('running')).toBe('lp-status-running');
    expect(statusClass('succeeded')).toBe('lp-status-ok');
    expect(statusClass('failed')).toBe('lp-status-bad');
    expect(statusClass('cancelled')).toBe('lp-status-muted');
    expect(statusClass('whatever')).toBe('lp-status-other');
  });
});

describe('shellQuote and curlExample', () => {
  it('quotes only what needs it', () => {
    expect(shellQuote('http://127.0.0.1:8000/api')).toBe('http://127.0.0.1:8000/api');
    expect(shellQuote("it's")).toBe(`'it'"'"'s'`);
    expect(shellQuote('a b')).toBe("'a b'");
  });

  it('builds a curl call with the token from the environment', () => {
    const text = curlExample('http://127.0.0.1:8000/digits-api/');
    const lines = text.split('\n');
    expect(lines[0]).toBe('curl -X POST http://127.0.0.1:8000/digits-api/predict \\');
    expect(text).toContain('Authorization: Bearer $LEPTON_TOKEN');
    expect(text).toContain(`-d '{"inputs": [[0.0, 0.0, 0.0, 0.0]]}'`);
    expect(text).not.toMatch(/Bearer [a-f0-9]{8}/);
  });
});

describe('formatFree and formatPercent', () => {
  it('formats', () => {
    expect(formatFree(3, 4)).toBe('3/4 free');
    expect(formatFree(0.5, 1)).toBe('0.5/1 free');
    expect(formatPercent(0.426)).toBe('43%');
    expect(formatPercent(null)).toBe('–');
  });
});
