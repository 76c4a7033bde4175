//go:build !race

package bmp_test

const raceEnabled = false
