import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Integration tests share one MariaDB and Redis; files run one at a time so that their timing
    // (kill -9 at random moments, lock leases) is not distorted by each other.
    fileParallelism: false
  }
})
