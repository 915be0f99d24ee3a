'use strict'
// A tiny Fastify API logging with pino (`logger: true`) to stdout, as in production.
// PORT selects the port (127.0.0.1 only); SIGTERM/SIGINT close the server gracefully and log it,
// SIGUSR2 is logged (pino's reopen signal) and the app keeps running.
const fastify = require('fastify')({ logger: true })

fastify.get('/health', async () => ({ status: 'ok' }))

fastify.get('/orders/:id', async (request) => {
  request.log.info({ orderId: request.params.id }, 'order looked up')
  return { id: request.params.id, items: 2 }
})

fastify.get('/fail', async () => {
  throw new Error('database connection lost')
})

let closing = false
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    if (closing) return
    closing = true
    fastify.log.info({ signal }, 'shutting down')
    await fastify.close()
    fastify.log.info('server closed')
    process.exit(Number(process.env.EXIT_CODE_ON_SHUTDOWN || 0))
  })
}

// pino.destination() reopens its log file on SIGUSR2 (logrotate); this app logs to stdout, so it says so.
process.on('SIGUSR2', () => fastify.log.info({ signal: 'SIGUSR2' }, 'log reopen requested'))

fastify.listen({ host: '127.0.0.1', port: Number(process.env.PORT || 3000) }).catch((err) => {
  fastify.log.error(err)
  process.exit(1)
})
