"""A Python client of pgtrace, as a FastAPI/SQLAlchemy service is set up.

SQLAlchemy (Debian's python3-sqlalchemy) over psycopg2 (python3-psycopg2),
with a before_cursor_execute hook that appends a sqlcommenter comment
(application, route, traceparent) to every statement, as
opentelemetry-python's SQLAlchemy instrumentation does with
enable_commenter=True. The trace context is the current request's, kept in
a contextvar: a stand-in for the server span an OpenTelemetry middleware
would start (the Debian packages have no OpenTelemetry).

Authors have books through a lazy-loading relationship, so a request that
lists every author's books makes one query per author: the N+1.

It plays REQUESTS requests and prints one JSON line: the trace and span
ids of the requests. The database comes from libpq's variables (PGHOST,
PGPORT, ...), pointed at pgtrace.
"""

import contextvars
import json
import os
import secrets
import sys
import urllib.parse

from sqlalchemy import Column, ForeignKey, Integer, String, create_engine, event
from sqlalchemy.orm import Session, declarative_base, relationship

APPLICATION = "python-app"
ROUTE = "/authors/{id}/books"

Base = declarative_base()


class Author(Base):
    __tablename__ = "authors"
    id = Column(Integer, primary_key=True)
    name = Column(String, nullable=False)
    books = relationship("Book", lazy="select", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"
    id = Column(Integer, primary_key=True)
    author_id = Column(Integer, ForeignKey("authors.id"), nullable=False)
    title = Column(String, nullable=False)


# The current request: its trace id, span id and route.
current_request = contextvars.ContextVar("current_request", default=None)


def _encode(value):
    # sqlcommenter: URL-encode, then escape ' with a backslash.
    return urllib.parse.quote(value, safe="").replace("'", "\\'")


def add_sqlcommenter_comment(conn, cursor, statement, parameters, context, executemany):
    """before_cursor_execute hook (retval=True): append the comment."""
    tags = {"application": APPLICATION}
    req = current_request.get()
    if req is not None:
        tags["route"] = req["route"]
        tags["traceparent"] = "00-%s-%s-01" % (req["trace_id"], req["span_id"])
    comment = ",".join("%s='%s'" % (_encode(k), _encode(v)) for k, v in sorted(tags.items()))
    if parameters is not None:
        # psycopg2 formats the statement with the parameters (pyformat):
        # a literal % in the comment must be doubled.
        comment = comment.replace("%", "%%")
    return "%s /*%s*/" % (statement, comment), parameters


def main():
    requests = int(os.environ.get("REQUESTS", "1"))
    authors = int(os.environ.get("AUTHORS", "6"))
    # psycopg2 reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
    engine = create_engine(
        "postgresql+psycopg2://",
        connect_args={"application_name": APPLICATION},
        future=True,
    )
    event.listen(engine, "before_cursor_execute", add_sqlcommenter_comment, retval=True)

    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for a in range(1, authors + 1):
            author = Author(id=a, name="author %d" % a)
            author.books = [Book(title="book %d.%d" % (a, b)) for b in range(1, 3)]
            session.add(author)
        session.commit()

    out = []
    for _ in range(requests):
        req = {"trace_id": secrets.token_hex(16), "span_id": secrets.token_hex(8), "route": ROUTE, "sampled": True}
        token = current_request.set(req)
        try:
            with Session(engine) as session:
                titles = 0
                for author in session.query(Author).order_by(Author.id):
                    titles += len(author.books)  # lazy load: one query per author
                if titles != 2 * authors:
                    raise SystemExit("read %d titles, want %d" % (titles, 2 * authors))
        finally:
            current_request.reset(token)
        out.append({k: req[k] for k in ("trace_id", "span_id", "sampled")})
    engine.dispose()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
