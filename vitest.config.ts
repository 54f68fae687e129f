import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    pool: 'forks',
    // no test reaches the real Hub: models without --calib calibrate on the bundled text (the Hub
    // tests run their own local server and say so per call)
    env: { HF_HUB_OFFLINE: '1' },
  },
});
