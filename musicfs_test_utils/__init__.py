"""Test harness for MusicFS: fakes, fixtures, the daemon driver, the chaos proxy and servers."""
