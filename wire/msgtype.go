package wire

// Message type bytes, named once (the protocol's names; pgproto3 has no
// constants for them). The same byte means different messages in the two
// directions, hence the fe and be prefixes.
const (
	// Frontend (client → server).
	feBind         byte = 'B'
	feClose        byte = 'C'
	feCopyData     byte = 'd'
	feCopyDone     byte = 'c'
	feCopyFail     byte = 'f'
	feDescribe     byte = 'D'
	feExecute      byte = 'E'
	feFlush        byte = 'H'
	feFunctionCall byte = 'F'
	feParse        byte = 'P'
	fePassword     byte = 'p' // also SASLInitialResponse, SASLResponse, GSSResponse
	feQuery        byte = 'Q'
	feSync         byte = 'S'
	feTerminate    byte = 'X'

	// Backend (server → client).
	beAuthentication       byte = 'R'
	beBackendKeyData       byte = 'K'
	beBindComplete         byte = '2'
	beCloseComplete        byte = '3'
	beCommandComplete      byte = 'C'
	beCopyBothResponse     byte = 'W'
	beCopyData             byte = 'd'
	beCopyDone             byte = 'c'
	beCopyInResponse       byte = 'G'
	beCopyOutResponse      byte = 'H'
	beDataRow              byte = 'D'
	beEmptyQueryResponse   byte = 'I'
	beErrorResponse        byte = 'E'
	beFunctionCallResponse byte = 'V'
	beNoData               byte = 'n'
	beNoticeResponse       byte = 'N'
	beNotificationResponse byte = 'A'
	beParameterDescription byte = 't'
	beParameterStatus      byte = 'S'
	beParseComplete        byte = '1'
	bePortalSuspended      byte = 's'
	beReadyForQuery        byte = 'Z'
	beRowDescription       byte = 'T'
)

// Message types whose body the observers read in full; the others stream
// when they do not fit the buffer (a large Bind's names come first).
var (
	frontendWhole = wholeTable(feQuery, feParse, feClose, feExecute, feSync, feFlush)
	backendWhole  = wholeTable(beCommandComplete, beErrorResponse, beBackendKeyData, beParameterStatus,
		beReadyForQuery, beAuthentication, beCopyInResponse, beCopyOutResponse, beCopyBothResponse,
		beEmptyQueryResponse, bePortalSuspended, beParseComplete, beBindComplete, beCloseComplete, beNoData)
)

func wholeTable(types ...byte) *[256]bool {
	var t [256]bool
	for _, c := range types {
		t[c] = true
	}
	return &t
}

// What a Close (or Describe) names: the byte after its type.
const (
	closeStatement byte = 'S'
	closePortal    byte = 'P'
)
