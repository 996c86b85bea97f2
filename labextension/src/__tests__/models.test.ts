import {
  anyRunning,
  errorMessage,
  gpuMemoryFraction,
  IJob,
  jobElapsed,
  notebookOf,
  progressFraction,
  sortJobs,
  tailLines
} from '../models';

function job(over: Partial<IJob>): IJob {
  return {
    id: 'j1',
    name: null,
    kind: 'cell',
    status: 'succeeded',
    user: 'ada',
    created: 100,
    started: 100,
    finished: 110,
    elapsed: 10,
    resources: {},
    origin: null,
    notebook: null,
    error: null,
    log_tail: '',
    warnings: [],
    ...over
  };
}

describe('sortJobs', () => {
  it('puts running jobs first, then the newest', () => {
    const jobs = [
      job({ id: 'old', created: 1 }),
      job({ id: 'new', created: 9 }),
      job({ id: 'run-old', created: 2, status: 'running' }),
      job({ id: 'run-new', created: 5, status: 'running' })
    ];
    expect(sortJobs(jobs).map(j => j.id)).toEqual(['run-new', 'run-old', 'new', 'old']);
    expect(jobs[0].id).toBe('old'); // not sorted in place
  });
});

describe('jobElapsed', () => {
  it('counts to now while running and to the end after', () => {
    expect(jobElapsed(job({ started: 100, finished: null }), 130)).toBe(30);
    expect(jobElapsed(job({ started: 100, finished: 112 }), 500)).toBe(12);
    expect(jobElapsed(job({ started: null }), 500)).toBeNull();
    expect(jobElapsed(job({ started: 200, finished: null }), 150)).toBe(0);
  });
});

describe('progressFraction', () => {
  it('is known only for a bounded progress', () => {
    expect(progressFraction(job({ progress: { n: 5, total: 20 } }))).toBe(0.25);
    expect(progressFraction(job({ progress: { n: 50, total: 20 } }))).toBe(1);
    expect(progressFraction(job({ progress: { n: 5, total: null } }))).toBeNull();
    expect(progressFraction(job({}))).toBeNull();
  });
});

describe('tailLines', () => {
  it('keeps the last lines', () => {
    expect(tailLines('a\nb\nc\nd\n\n', 2)).toBe('c\nd');
    expect(tailLines('', 3)).toBe('');
    expect(tailLines('one', 3)).toBe('one');
  });
});

describe('gpuMemoryFraction', () => {
  it('needs both numbers', () => {
    expect(gpuMemoryFraction({ name: 'H100', memory_total_mb: 80000, memory_used_mb: 20000 })).toBe(
      0.25
    );
    expect(gpuMemoryFraction({ name: 'H100', memory_total_mb: 80000 })).toBeNull();
    expect(gpuMemoryFraction({ name: 'x', memory_total_mb: 0, memory_used_mb: 1 })).toBeNull();
  });
});

describe('notebookOf', () => {
  it('prefers the resolved notebook, then a notebook origin', () => {
    expect(notebookOf(job({ notebook: 'work/a.ipynb', origin: 'kernel:x' }))).toBe('work/a.ipynb');
    expect(notebookOf(job({ origin: 'runs/b.ipynb' }))).toBe('runs/b.ipynb');
    expect(notebookOf(job({ origin: 'kernel:1234' }))).toBeNull();
    expect(notebookOf(job({ origin: 'cli' }))).toBeNull();
  });
});

describe('anyRunning', () => {
  it('spots a running job', () => {
    expect(anyRunning([job({}), job({ status: 'running' })])).toBe(true);
    expect(anyRunning([job({})])).toBe(false);
  });
});

describe('errorMessage', () => {
  it('takes the first line of the JSON error', () => {
    expect(errorMessage(503, '{"error": "cluster unreachable\\nmore", "type": "X"}')).toBe(
      'cluster unreachable'
    );
    expect(errorMessage(404, '{"message": "no job"}')).toBe('no job');
  });

  it('copes with HTML and empty bodies', () => {
    expect(errorMessage(502, '<html><b>Bad gateway</b></html>')).toBe('Bad gateway');
    expect(errorMessage(500, '')).toBe('the Lepton server extension answered HTTP 500');
    expect(errorMessage(403, '')).toMatch(/log in again/);
  });

  it('shortens long messages', () => {
    const msg = errorMessage(400, JSON.stringify({ error: 'x'.repeat(500) }));
    expect(msg.length).toBe(300);
    expect(msg.endsWith('...')).toBe(true);
  });
});
