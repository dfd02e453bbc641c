// Bundles the console into dist/ (committed; embedded in the keyauth binary): console.js from
// src/main.ts, console.css and index.html copied. Deterministic for one lockfile: no source
// map, no timestamp, no absolute path, so `.ci/console` can check dist/ matches the sources.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

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
copyFileSync("console.css", "dist/console.css");
copyFileSync("index.html", "dist/index.html");
