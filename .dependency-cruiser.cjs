/**
 * Import rules, checked by `npm test` (dependency-cruiser): no cycles, and no module imports a layer
 * above its own. Layers, lowest first (a module may import its own layer and those below):
 */
const LAYERS = [
  ['base', '^src/(errors\\.ts|util/|safetensors/(dtypes|size)\\.ts)'],
  ['codecs', '^src/codecs/'],
  ['safetensors', '^src/safetensors/(?!(dtypes|size)\\.ts)'],
  ['sources', '^src/sources/'],
  ['formats', '^src/formats/'],
  ['kernels', '^src/kernels/'],
  ['forward', '^src/forward/'],
  ['models', '^src/(models/|model\\.ts|hub\\.ts)'],
  ['pipeline', '^src/pipeline/'],
  ['export', '^src/export/'],
  ['calibration', '^src/calibration/'],
  ['operators', '^operators/'],
  ['commands', '^src/(eval|verify|inspect|plan-report|report|export-checkpoint|calibrate-checkpoint|eagle|index)\\.ts'],
  ['distributed', '^src/distributed/'],
  ['cli', '^(src/cli/|bin/)'],
];

const upward = LAYERS.slice(0, -1).map(([name, path], i) => ({
  name: `no-upward-from-${name}`,
  comment: `${name} must not import a higher layer (${LAYERS.slice(i + 1).map(([n]) => n).join(', ')})`,
  severity: 'error',
  from: { path },
  to: { path: LAYERS.slice(i + 1).map(([, p]) => `(${p})`).join('|') },
}));

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'an import cycle (type-only imports included)',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'every-module-in-a-layer',
      comment: 'a module under src/ or operators/ that no layer covers: add it to LAYERS in .dependency-cruiser.cjs',
      severity: 'error',
      from: { path: '^(src|operators)/', pathNot: LAYERS.map(([, p]) => `(${p})`).join('|') },
      to: {},
    },
    ...upward,
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(dist|node_modules)/' },
  },
};
