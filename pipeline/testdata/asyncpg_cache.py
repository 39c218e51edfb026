"""Runs one commented statement 8 times through asyncpg, whose statement
cache prepares it once by name and then executes the name.

Usage: asyncpg_cache.py DSN TRACEPARENT IN_TX(true|false)
"""
import asyncio
import sys

import asyncpg


async def main(dsn, traceparent, in_tx):
    conn = await asyncpg.connect(dsn)
    sql = "SELECT relname FROM pg_class WHERE oid = $1 /*traceparent='%s'*/" % traceparent
    tx = conn.transaction() if in_tx else None
    if tx:
        await tx.start()
    for i in range(8):
        await conn.fetchval(sql, 1259 + i)
    if tx:
        await tx.commit()
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "true"))
