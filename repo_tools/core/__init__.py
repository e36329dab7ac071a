"""Pure core of the publisher: no file system, no network, no clock."""
