"""Managers: objects living in a server process, used through proxies
(mirrors multiprocessing.managers).

A manager starts a server process (a cmp Process under the manager's
context) that listens on a Listener authenticated with the manager's
authkey. Each client connection is served by a thread of the server. The
server keeps the objects it creates by id, with reference counts that
proxies raise and lower; an object is dropped when its count reaches zero.

The wire protocol is the stdlib's: a request is (id, methodname, args,
kwds) and a reply is (kind, value) with kind one of '#RETURN', '#ERROR'
(an exception raised by the method, re-raised as itself in the caller),
'#TRACEBACK' and '#UNSERIALIZABLE' (failures of the server itself, raised
as RemoteError with the server's traceback text), and '#PROXY' (a method
whose result the server keeps, returned to the caller as a new proxy).
"""
import array
import collections.abc
import os
import queue
import signal
import sys
import threading
import time
import traceback
import types

from . import _versions, connection, pool, process, reduction, util  # noqa: F401
from .context import ProcessError, _default_context, get_spawning_popen
from .process import AuthenticationString

get_context = _default_context.get_context      # the stdlib's managers has it

__all__ = ['BaseManager', 'SyncManager', 'BaseProxy', 'Token']

# Dict views do not pickle: a server method returning one (dict.keys(), ...)
# sends a list, as the stdlib does.
def _rebuild_as_list(obj):
    return list, (list(obj),)


def _reduce_array(a):
    return array.array, (a.typecode, a.tobytes())


reduction.register(array.array, _reduce_array)


for _view in (type({}.items()), type({}.keys()), type({}.values())):
    reduction.register(_view, _rebuild_as_list)
del _view

reduce_array = _reduce_array            # the stdlib's names for these two
rebuild_as_list = _rebuild_as_list


# ---------------------------------------------------------------------------
# Tokens, state, errors

class Token:
    """What identifies a shared object: its typeid, server address and id."""
    __slots__ = ('typeid', 'address', 'id')

    def __init__(self, typeid, address, id):
        self.typeid, self.address, self.id = typeid, address, id

    def __getstate__(self):
        return (self.typeid, self.address, self.id)

    def __setstate__(self, state):
        self.typeid, self.address, self.id = state

    def __repr__(self):
        return '%s(typeid=%r, address=%r, id=%r)' % (
            type(self).__name__, self.typeid, self.address, self.id)


class State:
    __slots__ = ['value']
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


class RemoteError(Exception):
    """A failure inside the manager's server; str() shows its traceback."""

    def __str__(self):
        rule = '-' * 75
        return '\n%s\n%s%s' % (rule, self.args[0], rule)


def dispatch(c, id, methodname, args=(), kwds={}):
    """Send one request on c and return the result (or raise its error)."""
    c.send((id, methodname, args, kwds))
    kind, result = c.recv()
    if kind == '#RETURN':
        return result
    try:
        raise convert_to_error(kind, result)
    finally:
        del result      # the error's traceback holds this frame: no cycle


def convert_to_error(kind, result):
    if kind == '#ERROR':
        return result
    if kind in ('#TRACEBACK', '#UNSERIALIZABLE'):
        if not isinstance(result, str):
            return TypeError("Result {0!r} (kind '{1}') type is {2}, not str".format(
                result, kind, type(result)))
        if kind == '#UNSERIALIZABLE':
            return RemoteError('Unserializable message: %s\n' % result)
        return RemoteError(result)
    return ValueError('Unrecognized message type {!r}'.format(kind))


def all_methods(obj):
    """Names of the callable attributes of obj."""
    names = []
    for name in dir(obj):
        if callable(getattr(obj, name, None)):
            names.append(name)
    return names


def public_methods(obj):
    """Names of the callable attributes of obj not starting with '_'."""
    return [name for name in all_methods(obj) if name[0] != '_']


listener_client = {
    'pickle': (connection.Listener, connection.Client),
    'xmlrpclib': (connection.XmlListener, connection.XmlClient),
}


# ---------------------------------------------------------------------------
# The server (runs in the manager's process)

class Server:
    """Serves the objects of a manager to its clients, one thread each."""

    public = ['shutdown', 'create', 'accept_connection', 'get_methods',
              'debug_info', 'number_of_objects', 'dummy', 'incref', 'decref']

    def __init__(self, registry, address, authkey, serializer):
        if not isinstance(authkey, bytes):
            raise TypeError('Authkey {0!r} is type {1!s}, not bytes'.format(
                authkey, type(authkey)))
        self.registry = registry
        self.authkey = AuthenticationString(authkey)
        Listener, Client = listener_client[serializer]
        self.listener = Listener(address=address, backlog=16)
        self.address = self.listener.address
        self.id_to_obj = {'0': (None, ())}
        self.id_to_refcount = {}
        self.id_to_local_proxy_obj = {}
        self.mutex = threading.Lock()
        self.stop_event = None

    def serve_forever(self):
        """Accept and serve connections until a client asks for shutdown."""
        self.stop_event = threading.Event()
        process.current_process()._manager_server = self
        try:
            accepter = threading.Thread(target=self.accepter, daemon=True)
            accepter.start()
            try:
                while not self.stop_event.is_set():
                    self.stop_event.wait(1)
            except (KeyboardInterrupt, SystemExit):
                pass
        finally:
            if sys.stdout != sys.__stdout__:
                util.debug('resetting stdout, stderr')
                sys.stdout = sys.__stdout__
                sys.stderr = sys.__stderr__
            sys.exit(0)

    def accepter(self):
        while True:
            try:
                c = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self.handle_request, args=(c,), daemon=True).start()

    def _handle_request(self, c):
        request = None
        try:
            connection.deliver_challenge(c, self.authkey)
            connection.answer_challenge(c, self.authkey)
            request = c.recv()
            ignore, funcname, args, kwds = request
            assert funcname in self.public, '%r unrecognized' % funcname
            func = getattr(self, funcname)
        except Exception:
            msg = ('#TRACEBACK', traceback.format_exc())
        else:
            try:
                result = func(c, *args, **kwds)
            except Exception:
                msg = ('#TRACEBACK', traceback.format_exc())
            else:
                msg = ('#RETURN', result)
        try:
            c.send(msg)
        except Exception as e:
            try:
                c.send(('#TRACEBACK', traceback.format_exc()))
            except Exception:
                pass
            util.info('Failure to send message: %r', msg)
            util.info(' ... request was %r', request)
            util.info(' ... exception was %r', e)

    def handle_request(self, conn):
        """Handle one new connection: authenticate, then one request."""
        try:
            self._handle_request(conn)
        except SystemExit:
            pass        # a connection switched to serve_client has ended
        finally:
            conn.close()

    def _lookup(self, ident):
        try:
            return self.id_to_obj[ident]
        except KeyError:
            return self.id_to_local_proxy_obj[ident]

    def serve_client(self, conn):
        """Serve method calls on conn until the client goes away."""
        util.debug('starting server thread to service %r',
                   threading.current_thread().name)
        recv, send = conn.recv, conn.send
        while not self.stop_event.is_set():
            methodname = obj = None
            request = None
            try:
                request = recv()
                ident, methodname, args, kwds = request
                try:
                    obj, exposed, gettypeid = self._lookup(ident)
                except KeyError as ke:
                    raise ke
                if methodname not in exposed:
                    raise AttributeError('method %r of %r object is not in exposed=%r' %
                                         (methodname, type(obj), exposed))
                function = getattr(obj, methodname)
                try:
                    res = function(*args, **kwds)
                except Exception as e:
                    msg = ('#ERROR', e)
                else:
                    typeid = gettypeid and gettypeid.get(methodname, None)
                    if typeid:
                        rident, rexposed = self.create(conn, typeid, res)
                        token = Token(typeid, self.address, rident)
                        msg = ('#PROXY', (rexposed, token))
                    else:
                        msg = ('#RETURN', res)
            except AttributeError:
                if methodname is None:
                    msg = ('#TRACEBACK', traceback.format_exc())
                else:
                    try:
                        fallback = self.fallback_mapping[methodname]
                        result = fallback(self, conn, ident, obj, *args, **kwds)
                        msg = ('#RETURN', result)
                    except Exception:
                        msg = ('#TRACEBACK', traceback.format_exc())
            except EOFError:
                util.debug('got EOF -- exiting thread serving %r',
                           threading.current_thread().name)
                sys.exit(0)
            except Exception:
                msg = ('#TRACEBACK', traceback.format_exc())
            try:
                try:
                    send(msg)
                except Exception:
                    send(('#UNSERIALIZABLE', traceback.format_exc()))
            except Exception as e:
                util.info('exception in thread serving %r',
                          threading.current_thread().name)
                util.info(' ... message was %r', msg)
                util.info(' ... exception was %r', e)
                conn.close()
                sys.exit(1)

    def fallback_getvalue(self, conn, ident, obj):
        return obj

    def fallback_str(self, conn, ident, obj):
        return str(obj)

    def fallback_repr(self, conn, ident, obj):
        return repr(obj)

    fallback_mapping = {
        '__str__': fallback_str,
        '__repr__': fallback_repr,
        '#GETVALUE': fallback_getvalue,
    }

    def dummy(self, c):
        pass

    def debug_info(self, c):
        """A string describing the shared objects (for debugging)."""
        with self.mutex:
            result = []
            keys = sorted(self.id_to_refcount)
            for ident in keys:
                if ident != '0':
                    result.append('  %s:       refcount=%s\n    %s' % (
                        ident, self.id_to_refcount[ident],
                        str(self.id_to_obj[ident][0])[:75]))
            return '\n'.join(result)

    def number_of_objects(self, c):
        """How many shared objects the server holds."""
        return len(self.id_to_refcount)

    def shutdown(self, c):
        """Reply, then stop the server."""
        try:
            util.debug('manager received shutdown message')
            c.send(('#RETURN', None))
        except Exception:
            traceback.print_exc()
        finally:
            self.stop_event.set()

    def create(self, c, typeid, /, *args, **kwds):
        """Make a new shared object of typeid; returns (id, exposed)."""
        with self.mutex:
            callable, exposed, method_to_typeid, proxytype = self.registry[typeid]
            if callable is None:
                if kwds or len(args) != 1:
                    raise ValueError('Without callable, must have one non-keyword argument')
                obj = args[0]
            else:
                obj = callable(*args, **kwds)
            if exposed is None:
                exposed = public_methods(obj)
            if method_to_typeid is not None:
                if not isinstance(method_to_typeid, dict):
                    raise TypeError('Method_to_typeid {0!r}: type {1!s}, not dict'.format(
                        method_to_typeid, type(method_to_typeid)))
                exposed = list(exposed) + list(method_to_typeid)
            ident = '%x' % id(obj)
            util.debug('%r callable returned object with id %r', typeid, ident)
            self.id_to_obj[ident] = (obj, set(exposed), method_to_typeid)
            if ident not in self.id_to_refcount:
                self.id_to_refcount[ident] = 0
        self.incref(c, ident)
        return ident, tuple(exposed)

    def get_methods(self, c, token):
        """The methods exposed by the object of token."""
        return tuple(self.id_to_obj[token.id][1])

    def accept_connection(self, c, name):
        """Switch this connection to serving method calls."""
        threading.current_thread().name = name
        c.send(('#RETURN', None))
        self.serve_client(c)

    def incref(self, c, ident):
        with self.mutex:
            try:
                self.id_to_refcount[ident] += 1
            except KeyError as ke:
                if ident in self.id_to_local_proxy_obj:
                    # a proxy unpickled in the server revived its referent
                    self.id_to_refcount[ident] = 1
                    self.id_to_obj[ident] = self.id_to_local_proxy_obj[ident]
                    util.debug('Server re-enabled tracking & INCREF %r', ident)
                else:
                    raise ke

    def decref(self, c, ident):
        if ident not in self.id_to_refcount and ident in self.id_to_local_proxy_obj:
            util.debug('Server DECREF skipping %r', ident)
            return
        with self.mutex:
            if self.id_to_refcount[ident] <= 0:
                raise AssertionError('Id {0!s} ({1!r}) has refcount {2:n}, not 1+'.format(
                    ident, self.id_to_obj[ident], self.id_to_refcount[ident]))
            self.id_to_refcount[ident] -= 1
            if self.id_to_refcount[ident] == 0:
                del self.id_to_refcount[ident]
        if ident not in self.id_to_refcount:
            # the object itself is released outside the lock: its
            # destructor may call back into the server
            self.id_to_obj[ident] = (None, (), None)
            util.debug('disposing of obj with id %r', ident)
            with self.mutex:
                del self.id_to_obj[ident]


# ---------------------------------------------------------------------------
# Managers

class BaseManager:
    """A manager: start() a server process (or connect() to one), then
    create shared objects through the typeids registered on the class."""

    _registry = {}
    _Server = Server

    def __init__(self, address=None, authkey=None, serializer='pickle', ctx=None,
                 *, shutdown_timeout=1.0):
        if authkey is None:
            authkey = process.current_process().authkey
        self._address = address
        self._authkey = AuthenticationString(authkey)
        self._state = State()
        self._state.value = State.INITIAL
        self._serializer = serializer
        self._Listener, self._Client = listener_client[serializer]
        if ctx is None:
            from .context import _default_context
            ctx = _default_context.get_context()
        self._ctx = ctx
        self._shutdown_timeout = shutdown_timeout
        self._process = None

    def _check_initial(self):
        if self._state.value != State.INITIAL:
            if self._state.value == State.STARTED:
                raise ProcessError('Already started server')
            elif self._state.value == State.SHUTDOWN:
                raise ProcessError('Manager has shut down')
            else:
                raise ProcessError('Unknown state {!r}'.format(self._state.value))

    def get_server(self):
        """A Server for this manager, to run in this process (serve_forever)."""
        self._check_initial()
        return self._Server(self._registry, self._address, self._authkey, self._serializer)

    def connect(self):
        """Connect to an already running server at self.address."""
        Listener, Client = listener_client[self._serializer]
        conn = Client(self._address, authkey=self._authkey)
        try:
            dispatch(conn, None, 'dummy')
        finally:
            conn.close()
        self._state.value = State.STARTED

    def start(self, initializer=None, initargs=()):
        """Start the server process."""
        self._check_initial()
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        reader, writer = connection.Pipe(duplex=False)
        self._process = self._ctx.Process(
            target=type(self)._run_server,
            args=(self._registry, self._address, self._authkey, self._serializer,
                  writer, initializer, initargs))
        ident = ':'.join(str(i) for i in self._process._identity)
        self._process.name = type(self).__name__ + '-' + ident
        self._process.start()
        writer.close()
        self._address = reader.recv()
        reader.close()
        self._state.value = State.STARTED
        self.shutdown = util.Finalize(
            self, type(self)._finalize_manager,
            args=(self._process, self._address, self._authkey, self._state,
                  self._Client, self._shutdown_timeout),
            exitpriority=0)

    @classmethod
    def _run_server(cls, registry, address, authkey, serializer, writer,
                    initializer=None, initargs=()):
        """Entry point of the server process."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if initializer is not None:
            initializer(*initargs)
        server = cls._Server(registry, address, authkey, serializer)
        writer.send(server.address)
        writer.close()
        util.info('manager serving at %r', server.address)
        server.serve_forever()

    def _create(self, typeid, /, *args, **kwds):
        """Create a new shared object; returns its token and exposed methods."""
        assert self._state.value == State.STARTED, 'server not yet started'
        conn = self._Client(self._address, authkey=self._authkey)
        try:
            ident, exposed = dispatch(conn, None, 'create', (typeid,) + args, kwds)
        finally:
            conn.close()
        return Token(typeid, self._address, ident), exposed

    def join(self, timeout=None):
        """Wait for the server process to exit."""
        if self._process is not None:
            self._process.join(timeout)
            if not self._process.is_alive():
                self._process = None

    def _ask(self, methodname):
        """Call one of the server's own methods on a fresh connection."""
        conn = self._Client(self._address, authkey=self._authkey)
        try:
            return dispatch(conn, None, methodname)
        finally:
            conn.close()

    def _debug_info(self):
        return self._ask('debug_info')

    def _number_of_objects(self):
        return self._ask('number_of_objects')

    def __enter__(self):
        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value == State.INITIAL:
            raise ProcessError('Unable to start server')
        if self._state.value != State.STARTED:
            self._check_initial()       # raises: shut down, or an unknown state
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.shutdown()

    @staticmethod
    def _finalize_manager(process, address, authkey, state, _Client, shutdown_timeout):
        """Ask the server to stop; terminate it, then kill it, if it does not."""
        if process.is_alive():
            util.info('sending shutdown message to manager')
            try:
                conn = _Client(address, authkey=authkey)
                try:
                    dispatch(conn, None, 'shutdown')
                finally:
                    conn.close()
            except Exception:
                pass
            process.join(timeout=shutdown_timeout)
            if process.is_alive():
                util.info('manager still alive')
                if hasattr(process, 'terminate'):
                    util.info('trying to `terminate()` manager process')
                    process.terminate()
                    process.join(timeout=shutdown_timeout)
                    if process.is_alive():
                        util.info('manager still alive after terminate')
                        process.kill()
                        process.join()
        state.value = State.SHUTDOWN
        try:
            del BaseProxy._address_to_local[address]
        except KeyError:
            pass

    @property
    def address(self):
        return self._address

    @classmethod
    def register(cls, typeid, callable=None, proxytype=None, exposed=None,
                 method_to_typeid=None, create_method=True):
        """Register typeid: a callable making the object in the server and
        the proxy type that represents it in clients."""
        if '_registry' not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, '_exposed_', None)
        method_to_typeid = method_to_typeid or getattr(proxytype, '_method_to_typeid_', None)
        if method_to_typeid:
            for key, value in list(method_to_typeid.items()):
                assert type(key) is str, '%r is not a string' % key
                assert type(value) is str, '%r is not a string' % value
        cls._registry[typeid] = (callable, exposed, method_to_typeid, proxytype)
        if create_method:
            def temp(self, /, *args, **kwds):
                util.debug('requesting creation of a shared %r object', typeid)
                token, exp = self._create(typeid, *args, **kwds)
                proxy = proxytype(token, self._serializer, manager=self,
                                  authkey=self._authkey, exposed=exp)
                conn = self._Client(token.address, authkey=self._authkey)
                try:
                    dispatch(conn, None, 'decref', (token.id,))
                finally:
                    conn.close()
                return proxy
            temp.__name__ = typeid
            setattr(cls, typeid, temp)


# ---------------------------------------------------------------------------
# Proxies

class ProcessLocalSet(set):
    """A set emptied in a forked child, and pickled empty."""

    def __init__(self):
        util.register_after_fork(self, lambda obj: obj.clear())

    def __reduce__(self):
        return type(self), ()


class BaseProxy:
    """A reference to an object in a manager's server."""

    _address_to_local = {}
    _mutex = util.ForkAwareThreadLock()

    def __init__(self, token, serializer, manager=None, authkey=None, exposed=None,
                 incref=True, manager_owned=False):
        with BaseProxy._mutex:
            tls_idset = BaseProxy._address_to_local.get(token.address, None)
            if tls_idset is None:
                tls_idset = util.ForkAwareLocal(), ProcessLocalSet()
                BaseProxy._address_to_local[token.address] = tls_idset
        # one connection per thread per server, and the ids this process refers to
        self._tls = tls_idset[0]
        self._idset = tls_idset[1]
        self._token = token
        self._id = self._token.id
        self._manager = manager
        self._serializer = serializer
        self._Client = listener_client[serializer][1]
        self._owned_by_manager = manager_owned
        if authkey is not None:
            self._authkey = AuthenticationString(authkey)
        elif self._manager is not None:
            self._authkey = self._manager._authkey
        else:
            self._authkey = process.current_process().authkey
        if incref:
            self._incref()
        util.register_after_fork(self, BaseProxy._after_fork)

    def _connect(self):
        util.debug('making connection to manager')
        name = process.current_process().name
        if threading.current_thread().name != 'MainThread':
            name += '|' + threading.current_thread().name
        conn = self._Client(self._token.address, authkey=self._authkey)
        dispatch(conn, None, 'accept_connection', (name,))
        self._tls.connection = conn

    def _callmethod(self, methodname, args=(), kwds={}):
        """Call methodname on the referent; return its result or raise its error."""
        try:
            conn = self._tls.connection
        except AttributeError:
            util.debug('thread %r does not own a connection',
                       threading.current_thread().name)
            self._connect()
            conn = self._tls.connection
        conn.send((self._id, methodname, args, kwds))
        kind, result = conn.recv()
        if kind == '#RETURN':
            return result
        if kind == '#PROXY':
            exposed, token = result
            proxytype = self._manager._registry[token.typeid][-1]
            token.address = self._token.address
            proxy = proxytype(token, self._serializer, manager=self._manager,
                              authkey=self._authkey, exposed=exposed)
            conn = self._Client(token.address, authkey=self._authkey)
            try:
                dispatch(conn, None, 'decref', (token.id,))
            finally:
                conn.close()
            return proxy
        try:
            raise convert_to_error(kind, result)
        finally:
            del result      # the error's traceback holds this frame: no cycle

    def _getvalue(self):
        """A copy of the referent."""
        return self._callmethod('#GETVALUE')

    def _incref(self):
        if self._owned_by_manager:
            util.debug('owned_by_manager skipped INCREF of %r', self._token.id)
            return
        conn = self._Client(self._token.address, authkey=self._authkey)
        try:
            dispatch(conn, None, 'incref', (self._id,))
        finally:
            conn.close()
        util.debug('INCREF %r', self._token.id)
        self._idset.add(self._id)
        state = self._manager and self._manager._state
        self._close = util.Finalize(
            self, BaseProxy._decref,
            args=(self._token, self._authkey, state, self._tls, self._idset, self._Client),
            exitpriority=10)

    @staticmethod
    def _decref(token, authkey, state, tls, idset, _Client):
        idset.discard(token.id)
        if state is None or state.value == State.STARTED:
            try:
                util.debug('DECREF %r', token.id)
                conn = _Client(token.address, authkey=authkey)
                try:
                    dispatch(conn, None, 'decref', (token.id,))
                finally:
                    conn.close()
            except Exception as e:
                util.debug('... decref failed %s', e)
        else:
            util.debug('DECREF %r -- manager already shutdown', token.id)
        if not idset and hasattr(tls, 'connection'):
            util.debug('thread %r has no more proxies so closing conn',
                       threading.current_thread().name)
            tls.connection.close()
            del tls.connection

    def _after_fork(self):
        self._manager = None
        try:
            self._incref()
        except Exception as e:
            util.info('incref failed: %s' % e)

    def __reduce__(self):
        kwds = {}
        if get_spawning_popen() is not None:
            kwds['authkey'] = self._authkey
        if getattr(self, '_isauto', False):
            kwds['exposed'] = self._exposed_
            return (RebuildProxy, (AutoProxy, self._token, self._serializer, kwds))
        return (RebuildProxy, (type(self), self._token, self._serializer, kwds))

    def __deepcopy__(self, memo):
        return self._getvalue()

    def __repr__(self):
        return '<%s object, typeid %r at %#x>' % (type(self).__name__,
                                                  self._token.typeid, id(self))

    def __str__(self):
        """The referent's repr()."""
        try:
            return self._callmethod('__repr__')
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def RebuildProxy(func, token, serializer, kwds):
    """Unpickle a proxy; inside its own server, it refers to the object directly."""
    server = getattr(process.current_process(), '_manager_server', None)
    if server and server.address == token.address:
        util.debug('Rebuild a proxy owned by manager, token=%r', token)
        kwds['manager_owned'] = True
        if token.id not in server.id_to_local_proxy_obj:
            server.id_to_local_proxy_obj[token.id] = server.id_to_obj[token.id]
    incref = (kwds.pop('incref', True) and
              not getattr(process.current_process(), '_inheriting', False))
    return func(token, serializer, incref=incref, **kwds)


def _method_caller(name):
    def method(self, /, *args, **kwds):
        return self._callmethod(name, args, kwds)
    method.__name__ = name
    return method


def MakeProxyType(name, exposed, _cache={}):
    """A BaseProxy subclass with a method forwarding each name in exposed."""
    exposed = tuple(exposed)
    try:
        return _cache[(name, exposed)]
    except KeyError:
        pass
    dic = {meth: _method_caller(meth) for meth in exposed}
    ProxyType = type(name, (BaseProxy,), dic)
    ProxyType._exposed_ = exposed
    _cache[(name, exposed)] = ProxyType
    return ProxyType


def AutoProxy(token, serializer, manager=None, authkey=None, exposed=None,
              incref=True, manager_owned=False):
    """A proxy whose methods are those the server exposes for the object."""
    _Client = listener_client[serializer][1]
    if exposed is None:
        conn = _Client(token.address, authkey=authkey)
        try:
            exposed = dispatch(conn, None, 'get_methods', (token,))
        finally:
            conn.close()
    if authkey is None and manager is not None:
        authkey = manager._authkey
    if authkey is None:
        authkey = process.current_process().authkey
    ProxyType = MakeProxyType('AutoProxy[%s]' % token.typeid, exposed)
    proxy = ProxyType(token, serializer, manager=manager, authkey=authkey,
                      incref=incref, manager_owned=manager_owned)
    proxy._isauto = True
    return proxy


# ---------------------------------------------------------------------------
# Types the SyncManager keeps in its server

class Namespace:
    """An object whose attributes are the shared state."""

    def __init__(self, /, **kwds):
        self.__dict__.update(kwds)

    def __repr__(self):
        items = sorted('%s=%r' % (name, value) for name, value in self.__dict__.items()
                       if not name.startswith('_'))
        return '%s(%s)' % (self.__class__.__name__, ', '.join(items))


class Value:
    """A value with a typecode (the typecode is not enforced)."""

    def __init__(self, typecode, value, lock=True):
        self._typecode = typecode
        self._value = value

    def get(self):
        return self._value

    def set(self, value):
        self._value = value

    def __repr__(self):
        return '%s(%r, %r)' % (type(self).__name__, self._typecode, self._value)

    value = property(get, set)


def Array(typecode, sequence, lock=True):
    return array.array(typecode, sequence)


# ---------------------------------------------------------------------------
# Proxy types

class IteratorProxy(BaseProxy):
    _exposed_ = ('__next__', 'send', 'throw', 'close')

    def __iter__(self):
        return self

    def __next__(self, *args):
        return self._callmethod('__next__', args)

    def send(self, *args):
        return self._callmethod('send', args)

    def throw(self, *args):
        return self._callmethod('throw', args)

    def close(self, *args):
        return self._callmethod('close', args)


class AcquirerProxy(BaseProxy):
    _exposed_ = ('acquire', 'release', 'locked') if _versions.LOCK_LOCKED else ('acquire', 'release')

    def acquire(self, blocking=True, timeout=None):
        args = (blocking,) if timeout is None else (blocking, timeout)
        return self._callmethod('acquire', args)

    def release(self):
        return self._callmethod('release')

    if _versions.LOCK_LOCKED:
        def locked(self):
            return self._callmethod('locked')

    def __enter__(self):
        return self._callmethod('acquire')

    def __exit__(self, exc_type, exc_val, exc_tb):
        return self._callmethod('release')


class ConditionProxy(AcquirerProxy):
    _exposed_ = AcquirerProxy._exposed_ + ('wait', 'notify', 'notify_all')

    def wait(self, timeout=None):
        return self._callmethod('wait', (timeout,))

    def notify(self, n=1):
        return self._callmethod('notify', (n,))

    def notify_all(self):
        return self._callmethod('notify_all')

    def wait_for(self, predicate, timeout=None):
        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    _exposed_ = ('is_set', 'set', 'clear', 'wait')

    def is_set(self):
        return self._callmethod('is_set')

    def set(self):
        return self._callmethod('set')

    def clear(self):
        return self._callmethod('clear')

    def wait(self, timeout=None):
        return self._callmethod('wait', (timeout,))


class BarrierProxy(BaseProxy):
    _exposed_ = ('__getattribute__', 'wait', 'abort', 'reset')

    def wait(self, timeout=None):
        return self._callmethod('wait', (timeout,))

    def abort(self):
        return self._callmethod('abort')

    def reset(self):
        return self._callmethod('reset')

    @property
    def parties(self):
        return self._callmethod('__getattribute__', ('parties',))

    @property
    def n_waiting(self):
        return self._callmethod('__getattribute__', ('n_waiting',))

    @property
    def broken(self):
        return self._callmethod('__getattribute__', ('broken',))


class NamespaceProxy(BaseProxy):
    _exposed_ = ('__getattribute__', '__setattr__', '__delattr__')

    def __getattr__(self, key):
        if key[0] == '_':
            return object.__getattribute__(self, key)
        callmethod = object.__getattribute__(self, '_callmethod')
        return callmethod('__getattribute__', (key,))

    def __setattr__(self, key, value):
        if key[0] == '_':
            return object.__setattr__(self, key, value)
        callmethod = object.__getattribute__(self, '_callmethod')
        return callmethod('__setattr__', (key, value))

    def __delattr__(self, key):
        if key[0] == '_':
            return object.__delattr__(self, key)
        callmethod = object.__getattribute__(self, '_callmethod')
        return callmethod('__delattr__', (key,))


class ValueProxy(BaseProxy):
    _exposed_ = ('get', 'set')

    def get(self):
        return self._callmethod('get')

    def set(self, value):
        return self._callmethod('set', (value,))

    value = property(get, set)

    __class_getitem__ = classmethod(types.GenericAlias)


BaseListProxy = MakeProxyType('BaseListProxy', (
    '__add__', '__contains__', '__delitem__', '__getitem__', '__imul__',
    '__len__', '__mul__', '__reversed__', '__rmul__', '__setitem__',
    'append', *(('clear', 'copy') if _versions.MANAGER_SETS else ()), 'count', 'extend',
    'index', 'insert', 'pop', 'remove', 'reverse', 'sort',
))


def _in_place(name, server_method=None):
    """x op= y: server_method (name by default) on the server, and x stays
    this proxy."""
    server_method = server_method or name

    def method(self, value):
        self._callmethod(server_method, (value,))
        return self
    method.__name__ = method.__qualname__ = name
    return method


class ListProxy(BaseListProxy):
    __iadd__ = _in_place('__iadd__', 'extend')
    __imul__ = _in_place('__imul__')

    if _versions.PROXY_GENERIC:
        __class_getitem__ = classmethod(types.GenericAlias)


_BaseDictProxy = MakeProxyType('_BaseDictProxy' if _versions.MANAGER_SETS else 'DictProxy', (
    '__contains__', '__delitem__', '__getitem__',
    *(('__ior__', '__iter__', '__len__', '__or__', '__reversed__', '__ror__')
      if _versions.MANAGER_SETS else ('__iter__', '__len__')),
    '__setitem__', 'clear', 'copy', *(('fromkeys',) if _versions.MANAGER_SETS else ()),
    'get', 'items', 'keys', 'pop', 'popitem', 'setdefault', 'update', 'values',
))
_BaseDictProxy._method_to_typeid_ = {'__iter__': 'Iterator'}

if _versions.PROXY_GENERIC:
    class DictProxy(_BaseDictProxy):
        if _versions.MANAGER_SETS:
            __ior__ = _in_place('__ior__')

        __class_getitem__ = classmethod(types.GenericAlias)
else:
    DictProxy = _BaseDictProxy

if _versions.MANAGER_SETS:
    collections.abc.MutableSequence.register(BaseListProxy)
    collections.abc.MutableMapping.register(_BaseDictProxy)

    _BaseSetProxy = MakeProxyType('_BaseSetProxy', (
        '__and__', '__class_getitem__', '__contains__', '__iand__', '__ior__',
        '__isub__', '__iter__', '__ixor__', '__len__', '__or__', '__rand__',
        '__ror__', '__rsub__', '__rxor__', '__sub__', '__xor__',
        '__ge__', '__gt__', '__le__', '__lt__',
        'add', 'clear', 'copy', 'difference', 'difference_update', 'discard',
        'intersection', 'intersection_update', 'isdisjoint', 'issubset',
        'issuperset', 'pop', 'remove', 'symmetric_difference',
        'symmetric_difference_update', 'union', 'update',
    ))

    class SetProxy(_BaseSetProxy):
        __ior__ = _in_place('__ior__')
        __iand__ = _in_place('__iand__')
        __ixor__ = _in_place('__ixor__')
        __isub__ = _in_place('__isub__')

        __class_getitem__ = classmethod(types.GenericAlias)

    # (the stdlib registers it as a MutableMapping, by a slip; a set is a MutableSet)
    collections.abc.MutableSet.register(_BaseSetProxy)


ArrayProxy = MakeProxyType('ArrayProxy', ('__len__', '__getitem__', '__setitem__'))


BasePoolProxy = MakeProxyType('PoolProxy', (
    'apply', 'apply_async', 'close', 'imap', 'imap_unordered', 'join',
    'map', 'map_async', 'starmap', 'starmap_async', 'terminate',
))
BasePoolProxy._method_to_typeid_ = {
    'apply_async': 'AsyncResult',
    'map_async': 'AsyncResult',
    'starmap_async': 'AsyncResult',
    'imap': 'Iterator',
    'imap_unordered': 'Iterator',
}


class PoolProxy(BasePoolProxy):
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


def _Pool(*args, **kwds):
    """cmp.pool.Pool, for a manager's registered 'Pool'."""
    return pool.Pool(*args, **kwds)


# ---------------------------------------------------------------------------
# SyncManager

class SyncManager(BaseManager):
    """The manager of cmp.Manager(): queues, locks, dicts, lists, ... in a server."""


SyncManager.register('Queue', queue.Queue)
SyncManager.register('JoinableQueue', queue.Queue)
SyncManager.register('Event', threading.Event, EventProxy)
SyncManager.register('Lock', threading.Lock, AcquirerProxy)
SyncManager.register('RLock', threading.RLock, AcquirerProxy)
SyncManager.register('Semaphore', threading.Semaphore, AcquirerProxy)
SyncManager.register('BoundedSemaphore', threading.BoundedSemaphore, AcquirerProxy)
SyncManager.register('Condition', threading.Condition, ConditionProxy)
SyncManager.register('Barrier', threading.Barrier, BarrierProxy)
SyncManager.register('Pool', _Pool, PoolProxy)
SyncManager.register('list', list, ListProxy)
SyncManager.register('dict', dict, DictProxy)
SyncManager.register('Value', Value, ValueProxy)
SyncManager.register('Array', Array, ArrayProxy)
SyncManager.register('Namespace', Namespace, NamespaceProxy)
if _versions.MANAGER_SETS:
    SyncManager.register('set', set, SetProxy)

# types returned by methods, with no create method of their own
SyncManager.register('Iterator', proxytype=IteratorProxy, create_method=False)
SyncManager.register('AsyncResult', create_method=False)


# ---------------------------------------------------------------------------
# SharedMemoryManager: a server that unlinks, when it shuts down, the shared
# memory blocks its clients created through it.

try:
    from . import shared_memory
except ImportError:         # pragma: no cover -- part of cmp; kept optional as in the stdlib
    HAS_SHMEM = False
else:
    HAS_SHMEM = True
    __all__.append('SharedMemoryManager')


if HAS_SHMEM:
    class _SharedMemoryTracker:
        """The names of the blocks a SharedMemoryServer unlinks at shutdown."""

        def __init__(self, name, segment_names=None):
            self.shared_memory_context_name = name
            self.segment_names = [] if segment_names is None else segment_names

        def register_segment(self, segment_name):
            util.debug('Register segment %r in pid %d', segment_name, os.getpid())
            self.segment_names.append(segment_name)

        def destroy_segment(self, segment_name):
            util.debug('Destroy segment %r in pid %d', segment_name, os.getpid())
            self.segment_names.remove(segment_name)
            segment = shared_memory.SharedMemory(segment_name)
            segment.close()
            segment.unlink()

        def unlink(self):
            for segment_name in self.segment_names[:]:
                self.destroy_segment(segment_name)

        def __del__(self):
            util.debug('Call %s.__del__ in %d', type(self).__name__, os.getpid())
            self.unlink()

        def __getstate__(self):
            return (self.shared_memory_context_name, self.segment_names)

        def __setstate__(self, state):
            self.__init__(*state)

    class SharedMemoryServer(Server):

        public = Server.public + ['track_segment', 'release_segment', 'list_segments']

        def __init__(self, *args, **kwargs):
            Server.__init__(self, *args, **kwargs)
            self.shared_memory_context = _SharedMemoryTracker('shm_tracker_%d' % os.getpid())
            util.debug('SharedMemoryServer started by pid %d', os.getpid())

        def create(self, c, typeid, /, *args, **kwargs):
            """Create an object; types that ask for it get the tracker too."""
            if hasattr(self.registry[typeid][-1], '_shared_memory_proxy'):
                kwargs['shared_memory_context'] = self.shared_memory_context
            return Server.create(self, c, typeid, *args, **kwargs)

        def shutdown(self, c):
            """Unlink every tracked block, then stop."""
            self.shared_memory_context.unlink()
            return Server.shutdown(self, c)

        def track_segment(self, c, segment_name):
            self.shared_memory_context.register_segment(segment_name)

        def release_segment(self, c, segment_name):
            self.shared_memory_context.destroy_segment(segment_name)

        def list_segments(self, c):
            return self.shared_memory_context.segment_names

    class SharedMemoryManager(BaseManager):
        """A manager whose SharedMemory() and ShareableList() blocks are
        unlinked when it shuts down."""

        _Server = SharedMemoryServer

        def __init__(self, *args, **kwargs):
            BaseManager.__init__(self, *args, **kwargs)
            util.debug('%s created by pid %d', type(self).__name__, os.getpid())

        def __del__(self):
            util.debug('%s.__del__ by pid %d', type(self).__name__, os.getpid())

        def _tracked(self, make, block_of):
            """make() a block, once connected to the server, and have it tracked."""
            with self._Client(self._address, authkey=self._authkey) as conn:
                obj = make()
                try:
                    dispatch(conn, None, 'track_segment', (block_of(obj).name,))
                except BaseException:
                    block_of(obj).unlink()
                    raise
            return obj

        def SharedMemory(self, size):
            """A new SharedMemory block of size bytes, tracked by the server."""
            return self._tracked(
                lambda: shared_memory.SharedMemory(None, create=True, size=size),
                lambda sms: sms)

        def ShareableList(self, sequence):
            """A new ShareableList holding sequence, tracked by the server."""
            return self._tracked(lambda: shared_memory.ShareableList(sequence),
                                 lambda sl: sl.shm)
