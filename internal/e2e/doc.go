// Package e2e holds end-to-end tests of the shipped binary that cross every
// package: the recovery matrix, which stops `bgpedge run` in each state an
// edge host meets (a full spool, a full disk, sinks down, a corrupt segment,
// many routers), restarts it on the same directories, and checks with an
// oracle that it becomes ready and delivers everything it had accepted; and
// the README's newcomer path (configs/local.yaml into files, read back with
// `bgpedge tail --file`). It has no code outside its tests.
package e2e
