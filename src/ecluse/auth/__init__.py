"""Deciding who a client is and which secret to use towards the server.

auth/ runs above protocol/ (it drives the md5 and SCRAM exchanges defined
there) and below frontend/, which feeds it the client's messages; it never
touches sockets or pools.
"""
