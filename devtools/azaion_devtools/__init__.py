"""Development tools shared by the tests, the benchmarks and hack/: never installed in an image."""
