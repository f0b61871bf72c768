"""The only code the stages share: message codec, config, sockets, preprocessing, runtime."""
