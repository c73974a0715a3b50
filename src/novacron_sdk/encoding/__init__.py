"""Page codecs: stateful encoders and decoders over batches of fixed-size memory pages."""
