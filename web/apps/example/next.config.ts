import type { NextConfig } from "next";

const config: NextConfig = {
  // The workspace packages ship TypeScript sources.
  transpilePackages: ["@fanout/client", "@fanout/react"],
  reactStrictMode: true,
};

export default config;
