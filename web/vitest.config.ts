import { defineConfig } from "vitest/config";

// Two projects, one real gateway: the global setup starts `fanout-local` (no exchanges) for both.
export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 60_000,
    projects: [
      {
        extends: true,
        test: {
          name: "client",
          include: ["packages/client/test/**/*.test.ts"],
          environment: "happy-dom",
          globalSetup: ["packages/client/test/global-setup.ts"],
        },
      },
      {
        extends: true,
        test: {
          name: "react",
          include: ["packages/react/test/**/*.test.tsx"],
          environment: "happy-dom",
          globalSetup: ["packages/client/test/global-setup.ts"],
        },
      },
    ],
  },
});
