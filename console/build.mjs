// Bundles the console's script into dist/console.js (committed; compiled into the keyauth
// binary beside index.html and console.css, which need no build). Deterministic for one
// lockfile: no source map, no timestamp, no absolute path, so `.ci/console` can check that
// dist/ matches the sources.
import { build } from "esbuild";
import { mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/console.js",
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2022"],
  platform: "browser",
  sourcemap: false,
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
});
