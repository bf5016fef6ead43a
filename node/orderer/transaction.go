package orderer

// Fabric's form of an ENDORSER_TRANSACTION for data that no chaincode
// endorsed: what 'memberd ledger submit' writes, so that peers commit it
// (flagged invalid for want of endorsements, as Fabric does with any
// unendorsed transaction) and configtxlator decodes every block.
//
//	Payload.Data  = peer.Transaction{Actions: [{Header: SignatureHeader, Payload: ChaincodeActionPayload}]}
//	ChaincodeActionPayload.ChaincodeProposalPayload
//	              = ChaincodeProposalPayload{Input: ChaincodeInvocationSpec{
//	                    ChaincodeSpec{ChaincodeId: {Name: DataChaincode}, Input: {Args: [data]}}}}
//	ChaincodeActionPayload.Action
//	              = ChaincodeEndorsedAction{ProposalResponsePayload: {ProposalHash, Extension: ChaincodeAction{ChaincodeId: DataChaincode}},
//	                    Endorsements: none}
//
// ProposalHash is Fabric's: SHA-256 of channel header, signature header and
// the ChaincodeProposalPayload bytes.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/peer"
	"google.golang.org/protobuf/proto"
)

// DataChaincode names the chaincode a data transaction "invokes". No peer
// runs it: the name says where the data came from.
const DataChaincode = "memberd-data"

// NewEndorserTransaction builds and signs an ENDORSER_TRANSACTION carrying
// data as a well-formed peer.Transaction (see the top of this file).
func NewEndorserTransaction(id Identity, channel string, data []byte, now time.Time) (*common.Envelope, string, error) {
	return newEnvelope(id, common.HeaderType_ENDORSER_TRANSACTION, channel, now, func(ch, sh []byte) ([]byte, error) {
		return transactionBytes(ch, sh, data)
	})
}

func transactionBytes(ch, sh, data []byte) ([]byte, error) {
	cpp, err := proto.Marshal(&peer.ChaincodeProposalPayload{Input: mustMarshal(&peer.ChaincodeInvocationSpec{
		ChaincodeSpec: &peer.ChaincodeSpec{ChaincodeId: &peer.ChaincodeID{Name: DataChaincode},
			Input: &peer.ChaincodeInput{Args: [][]byte{data}}}})})
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(ch)
	h.Write(sh)
	h.Write(cpp)
	prp := mustMarshal(&peer.ProposalResponsePayload{ProposalHash: h.Sum(nil), Extension: mustMarshal(&peer.ChaincodeAction{ChaincodeId: &peer.ChaincodeID{Name: DataChaincode}})})
	ccap := mustMarshal(&peer.ChaincodeActionPayload{ChaincodeProposalPayload: cpp,
		Action: &peer.ChaincodeEndorsedAction{ProposalResponsePayload: prp}})
	return proto.Marshal(&peer.Transaction{Actions: []*peer.TransactionAction{{Header: sh, Payload: ccap}}})
}

// errNotData: the transaction is not one NewEndorserTransaction wrote.
var errNotData = errors.New("not a memberd data transaction")

// TransactionData returns the data of an ENDORSER_TRANSACTION payload
// written by NewEndorserTransaction (Payload.Data, a peer.Transaction).
func TransactionData(payloadData []byte) ([]byte, error) {
	tx := new(peer.Transaction)
	if err := proto.Unmarshal(payloadData, tx); err != nil {
		return nil, fmt.Errorf("%w: peer.Transaction: %v", errNotData, err)
	}
	if len(tx.Actions) != 1 {
		return nil, fmt.Errorf("%w: %d actions, want 1", errNotData, len(tx.Actions))
	}
	ccap := new(peer.ChaincodeActionPayload)
	if err := proto.Unmarshal(tx.Actions[0].Payload, ccap); err != nil {
		return nil, fmt.Errorf("%w: ChaincodeActionPayload: %v", errNotData, err)
	}
	cpp := new(peer.ChaincodeProposalPayload)
	if err := proto.Unmarshal(ccap.ChaincodeProposalPayload, cpp); err != nil {
		return nil, fmt.Errorf("%w: ChaincodeProposalPayload: %v", errNotData, err)
	}
	cis := new(peer.ChaincodeInvocationSpec)
	if err := proto.Unmarshal(cpp.Input, cis); err != nil {
		return nil, fmt.Errorf("%w: ChaincodeInvocationSpec: %v", errNotData, err)
	}
	spec := cis.GetChaincodeSpec()
	if spec.GetChaincodeId().GetName() != DataChaincode || len(spec.GetInput().GetArgs()) != 1 {
		return nil, fmt.Errorf("%w: chaincode %q with %d arguments", errNotData, spec.GetChaincodeId().GetName(), len(spec.GetInput().GetArgs()))
	}
	return spec.Input.Args[0], nil
}

// mustMarshal is for messages built here from byte slices, which always encode.
func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("orderer: marshal %T: %v", m, err))
	}
	return b
}
