module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // .ts before .js: `npm run build` leaves compiled .js beside the sources,
  // and the tests must run the sources.
  moduleFileExtensions: ['ts', 'js', 'json'],
  // tsconfig.json's isolatedModules: ts-jest only transpiles (`npm test`
  // type-checks with tsc first, once for all files, not once per suite).
  transform: { '^.+\\.ts$': 'ts-jest' },
};
