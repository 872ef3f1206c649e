from device.classify import run

run()
