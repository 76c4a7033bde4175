// Package bmp terminates BMP sessions from routers, frames and decodes BMP messages, and encodes them for the forwarder.
package bmp
