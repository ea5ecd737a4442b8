"""The quartet gRPC server: one process serving every quartet service over a Peewee database."""
