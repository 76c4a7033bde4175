package testenv

import "syscall"

// childAttr makes a child the test starts die with the test process, even
// when that is killed from outside: a killed test binary would otherwise
// leave its agents running. No test locks an OS thread, so the thread that
// started a child (whose exit is what the kernel watches) lives as long as
// the process.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
